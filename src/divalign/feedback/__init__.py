"""Collecting preferences: from people on a local labelling page (:mod:`~divalign.feedback.server`), from a judge
model (:mod:`~divalign.feedback.judge`, RLAIF), and from a model critiquing and revising its own responses against
written principles (:mod:`~divalign.feedback.constitution`). Every label is one line of a preference file in TRL's
format (:mod:`~divalign.feedback.labels`) that the training commands read as it is; :mod:`~divalign.feedback.
agreement` measures the labels (agreement between raters, position bias, win rate of an A/B study). See
docs/feedback.md."""
