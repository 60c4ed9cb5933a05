"""The catalog is checked against numbers computed here without its closed forms: conjugates against a brute
supremum over a fine grid, derivatives against finite differences, links against their definitions."""

import math

import pytest
import torch

from divalign import divergences


@pytest.fixture(autouse=True)
def float64():
    """Brute-force suprema need double precision; restore the default afterwards for other test modules."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


CASES = [
    ("kl", {}),
    ("reverse_kl", {}),
    ("pearson", {}),
    ("hellinger", {}),
    ("js", {}),
    ("tv", {}),
    ("alpha", {"alpha": 0.5}),
    ("alpha", {"alpha": 2.0}),
    ("alpha", {"alpha": -0.5}),
    ("alpha", {"alpha": 1.5}),
]
IDS = [f"{n}{p.get('alpha', '')}" for n, p in CASES]

# A grid on u > 0 fine enough that the brute-force supremum matches to ~1e-6 where u* lies in [1e-3, 1e3].
U = torch.logspace(-9, 6, 300001, dtype=torch.float64)
R = torch.linspace(-50, 50, 2001, dtype=torch.float64)


def interior_ts(div):
    d = div.domain
    lo = max(d.low, -5.0) if math.isfinite(d.low) else -5.0
    hi = min(d.high, 5.0) if math.isfinite(d.high) else 5.0
    if d.low == -0.5 and d.high == 0.5:  # TV: closed domain, use it all
        return torch.linspace(-0.5, 0.5, 11)
    margin = 0.1 * (hi - lo) / 10
    return torch.linspace(lo + margin, hi - margin, 23)


def brute_conjugate(div, t):
    fu = div.f(U)
    return torch.stack([(ti * U - fu).max() for ti in t])


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_f_vanishes_at_one_and_is_convex(name, params):
    div = divergences.get(name, **params)
    assert abs(float(div.f(torch.tensor(1.0)))) < 1e-12
    u = torch.logspace(-3, 3, 2001)
    h = 1e-4 * u
    second = div.f(u + h) - 2 * div.f(u) + div.f(u - h)
    assert (second >= -1e-12).all()
    # Strictly convex somewhere (TV is only convex, with its kink at 1).
    assert (second > 0).any()


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_f_prime_matches_finite_difference(name, params):
    div = divergences.get(name, **params)
    u = torch.tensor([0.05, 0.3, 0.7, 1.6, 4.0, 20.0])
    h = 1e-6
    numeric = (div.f(u + h) - div.f(u - h)) / (2 * h)
    torch.testing.assert_close(div.f_prime(u), numeric, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_conjugate_equals_brute_force_supremum(name, params):
    div = divergences.get(name, **params)
    t = interior_ts(div)
    torch.testing.assert_close(div.conjugate(t), brute_conjugate(div, t), rtol=1e-5, atol=1e-5)


BOUNDED = [(n, p) for n, p in CASES if math.isfinite(divergences.get(n, **p).domain.high)]


@pytest.mark.parametrize("name,params", BOUNDED, ids=[f"{n}{p.get('alpha', '')}" for n, p in BOUNDED])
def test_conjugate_is_infinite_outside_its_domain(name, params):
    div = divergences.get(name, **params)
    t = torch.tensor([div.domain.high + 0.25, div.domain.high + 1.0])
    assert torch.isinf(div.conjugate(t)).all()
    # The brute supremum keeps growing with the grid: it is unbounded.
    assert (brute_conjugate(div, t) > 100).all()


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_fenchel_young_equality(name, params):
    div = divergences.get(name, **params)
    u = torch.tensor([0.02, 0.4, 0.9, 1.3, 3.0, 12.0])
    fp = div.f_prime(u)
    torch.testing.assert_close(div.conjugate(fp), u * fp - div.f(u), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
@pytest.mark.parametrize("link", ["canonical", "fgan"])
def test_link_image_lies_in_conjugate_domain(name, params, link):
    div = divergences.get(name, **params)
    lk = div.link(link)
    image = lk.g(R)
    assert torch.isfinite(image).all()
    # Strictly inside wherever float64 can tell the image apart from the boundary ...
    moderate = R.abs() <= 20
    assert div.domain.contains(image[moderate]).all()
    # ... and never beyond it, even where rounding lands on the boundary (e.g. ln 2 − softplus(−50) == ln 2).
    assert (image >= div.domain.low).all() and (image <= div.domain.high).all()
    # The closed form of f*(g(r)) used by the losses stays finite over the whole range.
    assert torch.isfinite(lk.conjugate_of_g(R)).all()


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
@pytest.mark.parametrize("link", ["canonical", "fgan"])
def test_link_closed_form_equals_conjugate_of_link(name, params, link):
    div = divergences.get(name, **params)
    lk = div.link(link)
    r = torch.linspace(-8, 8, 161)
    torch.testing.assert_close(lk.conjugate_of_g(r), div.conjugate(lk.g(r)), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name,params", [c for c in CASES if c[0] != "tv"], ids=[i for i in IDS if i != "tv"])
def test_canonical_link_is_f_prime_of_exp(name, params):
    div = divergences.get(name, **params)
    r = torch.linspace(-6, 6, 121)
    torch.testing.assert_close(div.canonical(r), div.f_prime(torch.exp(r)), rtol=1e-9, atol=1e-9)


def test_tv_canonical_is_the_smoothed_sign():
    tv = divergences.get("tv")
    r = torch.linspace(-6, 6, 121)
    torch.testing.assert_close(tv.canonical(r), 0.5 * torch.tanh(r / 2))
    # Same sign as the literal (degenerate) canonical link ½·sign(r).
    assert torch.equal(torch.sign(tv.canonical(r)), torch.sign(tv.f_prime(torch.exp(r))))


# research/algorithms.md §1.2, per-sample loss pieces under the canonical link, constants dropped:
# (positive side −g(r), negative side f*(g(r))) up to an additive constant each.
TABLE = {
    "kl": (lambda r: -r, lambda r: torch.exp(r)),
    "reverse_kl": (lambda r: torch.exp(-r), lambda r: r),
    "pearson": (lambda r: -2 * torch.exp(r), lambda r: torch.exp(2 * r)),
    "hellinger": (lambda r: torch.exp(-r / 2), lambda r: torch.exp(r / 2)),
    "js": (lambda r: torch.nn.functional.softplus(-r), lambda r: torch.nn.functional.softplus(r)),
    "tv": (lambda r: -torch.sigmoid(r), lambda r: torch.sigmoid(r)),
}


@pytest.mark.parametrize("name", TABLE)
def test_canonical_pieces_match_the_spec_table(name):
    div = divergences.get(name)
    r = torch.linspace(-5, 5, 41)
    pos, neg = TABLE[name]
    d_pos = -div.canonical(r) - pos(r)
    d_neg = div.canonical_conjugate(r) - neg(r)
    # Equal up to a constant shift.
    torch.testing.assert_close(d_pos, d_pos[0].expand_as(d_pos))
    torch.testing.assert_close(d_neg, d_neg[0].expand_as(d_neg))


def test_safe_exp_is_exact_below_the_limit_and_finite_above():
    x = torch.tensor([-100.0, 0.0, 10.0, 29.9, 30.0, 50.0, 1e6], requires_grad=True)
    y = divergences.safe_exp(x)
    torch.testing.assert_close(y[:5], torch.exp(x[:5]))
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert (x.grad[1:] > 0).all()


def test_aliases_and_bad_names():
    assert divergences.get("jensen_shannon").name == "js"
    assert divergences.get("total_variation").name == "tv"
    with pytest.raises(ValueError, match="unknown divergence 'bogus'"):
        divergences.get("bogus")
    with pytest.raises(ValueError, match="alpha not in"):
        divergences.get("alpha", alpha=1.0)
    with pytest.raises(ValueError, match="takes no parameters"):
        divergences.get("kl", alpha=0.3)
    with pytest.raises(ValueError, match="unknown link"):
        divergences.get("kl").link("identity")
