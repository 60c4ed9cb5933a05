import sys

from divalign.cli import main

sys.exit(main())
