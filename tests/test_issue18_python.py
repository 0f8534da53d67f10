"""Regression tests for the Python-side defects of issue 18 (W5–W8, W10–W12 and the smaller ones), each with the
issue's reproducer or one like it, checked against the float64 reference; and for the renamed options of issue 22
(old names accepted with a DeprecationWarning)."""

import math
import warnings

import pytest
import torch

import fastcka
import fastcka.reference as R
from conftest import correlated_pair, randn
from fastcka.streaming import LinearCKA, LinearCKAMatrix, MinibatchCKA, MinibatchCKAMatrix


# --- W8: a pair of σ for one list --------------------------------------------------------------------------------
def test_w8_sigma_pair_with_one_list_is_refused():
    xs = [randn(30, 4, seed=1), randn(30, 3, seed=2)]
    with pytest.raises(ValueError, match=r"sigma=\(1, 3\) is a pair"):
        fastcka.cka_matrix(xs, kernel="rbf", sigma=(1, 3))
    m = fastcka.cka_matrix(xs, kernel="rbf", sigma=2.0)  # one σ: symmetric, unit diagonal, as documented
    torch.testing.assert_close(m, m.T, rtol=0, atol=0)
    assert m.diagonal().tolist() == [1.0, 1.0]
    torch.testing.assert_close(m[0, 1], R.rbf_cka(xs[0], xs[1], 2.0, 2.0), rtol=1e-10, atol=1e-12)


# --- W12: the median-heuristic threshold's range ------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [1e200, 1e-200, 1e7, 1e-7, float("inf"), 0.0, -1.0])
def test_w12_threshold_outside_the_accepted_range_is_refused(threshold):
    x, y = correlated_pair(40, 5, 3, seed=3)
    with pytest.raises(ValueError, match=r"threshold must be in \[1e-06, 1e\+06\]"):
        fastcka.cka(x, y, kernel="rbf", threshold=threshold)
    with pytest.raises(ValueError, match="threshold"):
        fastcka.cka_matrix([x, y], kernel="rbf", threshold=threshold)
    with pytest.raises(ValueError, match="threshold"):
        fastcka.functional.rbf_gamma(x, threshold=threshold)


@pytest.mark.parametrize("threshold", [1e-2, 0.5, 3.0, 1e2])
def test_w12_thresholds_inside_the_range_match_the_reference(threshold):
    x, y = correlated_pair(40, 5, 3, seed=4)
    torch.testing.assert_close(fastcka.cka(x, y, kernel="rbf", threshold=threshold),
                               R.rbf_cka(x, y, threshold=threshold), rtol=1e-9, atol=1e-12)


def test_w12_threshold_type():
    x, y = correlated_pair(10, 2, 2, seed=5)
    with pytest.raises(TypeError, match="threshold"):
        fastcka.cka(x, y, kernel="rbf", threshold="1")


# --- smaller: σ with the linear kernel, non-bool unbiased ---------------------------------------------------------
def test_sigma_with_the_linear_kernel_is_refused():
    x, y = correlated_pair(20, 3, 3, seed=6)
    for f in (fastcka.cka, fastcka.hsic, fastcka.hsic_terms):
        with pytest.raises(ValueError, match="sigma is only used with kernel='rbf'"):
            f(x, y, kernel="linear", sigma=1.0)
    with pytest.raises(ValueError, match="sigma is only used"):
        fastcka.cka(x, y, method="tiled", sigma=1.0)
    with pytest.raises(ValueError, match="sigma is only used"):
        fastcka.cka_matrix([x, y], sigma=1.0)


@pytest.mark.parametrize("bad", ["no", "False", 0, 1, None, 1.0])
def test_unbiased_must_be_a_bool(bad):
    x, y = correlated_pair(20, 3, 3, seed=7)
    for call in (lambda: fastcka.cka(x, y, unbiased=bad), lambda: fastcka.hsic(x, y, unbiased=bad),
                 lambda: fastcka.cka_matrix([x, y], unbiased=bad),
                 lambda: fastcka.center_gram(x @ x.T, unbiased=bad)):
        with pytest.raises(TypeError, match="unbiased must be True or False"):
            call()


def test_options_are_keyword_only():
    x, y = correlated_pair(20, 3, 3, seed=8)
    with pytest.raises(TypeError):
        fastcka.cka(x, y, "linear", True)
    with pytest.raises(TypeError):
        fastcka.center_gram(x @ x.T, True)
    with pytest.raises(TypeError):
        fastcka.frequency_spectrum(x, 0)
    with pytest.raises(TypeError):
        fastcka.cka_matrix([x], [y], "linear")


# --- W10: float32 Fourier measures centre before the DFT ----------------------------------------------------------
def _planted_with_offset(p: int, offset_in_spreads: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.arange(p, dtype=torch.float64)[:, None]
    w = torch.cos(2 * math.pi * 3 * a / p) @ torch.randn(1, 8, generator=g, dtype=torch.float64)
    w = w + 0.3 * torch.randn(p, 8, generator=g, dtype=torch.float64)
    return w + offset_in_spreads * w.std()


@pytest.mark.parametrize("offset", [1e3, 1e6])
@pytest.mark.parametrize("dft", ["matmul", "fft"])
def test_w10_float32_fourier_measures_survive_a_large_offset(offset, dft):
    x = _planted_with_offset(31, offset, seed=9).float()
    xd = x.double()  # the reference on the same float32 values
    ref = R.frequency_concentration(xd, 1)
    torch.testing.assert_close(fastcka.frequency_concentration(x, 1).double(), ref, rtol=1e-5, atol=1e-6)
    s, r = fastcka.frequency_spectrum(x, dft=dft).double(), R.frequency_spectrum(xd)
    torch.testing.assert_close(s[1:], r[1:], rtol=1e-5, atol=1e-5 * r[1:].max().item())
    torch.testing.assert_close(s[0], r[0], rtol=1e-6, atol=0)  # the constant's energy, added back exactly
    assert fastcka.key_frequencies(x, 1).tolist() == R.key_frequencies(xd, 1).tolist() == [3]


def test_w10_grid_with_a_large_offset():
    g = torch.Generator().manual_seed(10)
    x = (torch.randn(13, 13, 3, generator=g, dtype=torch.float64) + 1e6).float()
    torch.testing.assert_close(fastcka.frequency_concentration(x, 2, dim=(0, 1)).double(),
                               R.frequency_concentration(x.double(), 2, dim=(0, 1)), rtol=1e-5, atol=1e-6)


def test_w10_constant_input_still_gives_zero():
    for v in (0.1, 2.5, 1e6, 3e-7):
        for dt in (torch.float32, torch.float64, torch.bfloat16):
            assert fastcka.frequency_concentration(torch.full((17, 4), v, dtype=dt), 2).item() == 0.0
            assert fastcka.frequency_concentration(torch.full((7, 7, 3), v, dtype=dt), 2, dim=(0, 1)).item() == 0.0


# --- issue 22: renamed Fourier options ----------------------------------------------------------------------------
def test_fourier_old_names_warn_and_agree():
    x = randn(11, 3, 11, seed=11)
    new = fastcka.frequency_spectrum(x, dim=(0, 2), dft="fft")
    with pytest.warns(DeprecationWarning, match=r"dims= is deprecated.*use dim="):
        old = fastcka.frequency_spectrum(x, dims=(0, 2))
    torch.testing.assert_close(old, new, rtol=1e-10, atol=1e-10 * new.max().item())
    with pytest.warns(DeprecationWarning, match=r"method= is deprecated.*use dft="):
        fastcka.frequency_spectrum(x, method="matmul")
    for f in (fastcka.frequency_concentration, fastcka.key_frequencies):
        with pytest.warns(DeprecationWarning, match="dims="):
            f(x, 1, dims=(0, 2))
    with pytest.warns(DeprecationWarning, match="dims="):
        R.frequency_spectrum(x, dims=(0, 2))
    with pytest.raises(TypeError, match="both dim= and its deprecated name dims="):
        fastcka.frequency_spectrum(x, dim=1, dims=(0, 2))
    with pytest.raises(TypeError, match="unexpected keyword argument 'dimz'"):
        fastcka.frequency_spectrum(x, dimz=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'method'"):
        fastcka.frequency_concentration(x, 1, method="fft")  # never took a DFT method
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastcka.frequency_spectrum(x, dim=0, dims=None)  # the old default, passed explicitly: no warning


def test_deprecation_warning_points_at_the_callers_line():
    x = randn(7, 2, seed=12)
    with pytest.warns(DeprecationWarning) as rec:
        fastcka.key_frequencies(x, 1, dims=0)
    assert rec[0].filename == __file__


# --- W5: minibatch sums with another σ are refused ----------------------------------------------------------------
def _two_minibatch(sigma_a, sigma_b, matrix=False):
    x, y = correlated_pair(48, 4, 3, seed=20)
    make = (lambda s: MinibatchCKAMatrix(2, kernel="rbf", sigma=s)) if matrix else (
        lambda s: MinibatchCKA(kernel="rbf", sigma=s))
    a, b = make(sigma_a), make(sigma_b)
    a.update(x[:24], y[:24])
    b.update(x[24:], y[24:])
    return a, b, x, y


@pytest.mark.parametrize("sigmas", [(1.0, 3.0), (None, 2.0), ((1.0, 2.0), (2.0, 1.0))])
def test_w5_minibatch_merge_and_load_refuse_another_sigma(sigmas):
    a, b, _, _ = _two_minibatch(*sigmas)
    before = a.compute()
    with pytest.raises(ValueError, match="sigma="):
        a.merge(b)
    with pytest.raises(ValueError, match="sigma="):
        a.load_state_dict(b.state_dict())
    assert torch.equal(a.compute(), before)  # nothing was blended in


def test_w5_same_sigma_still_merges_and_equals_the_reference():
    a, b, x, y = _two_minibatch(2.0, 2.0)
    want = R.minibatch_cka([x[:24], x[24:]], [y[:24], y[24:]], kernel="rbf", sigma=(2.0, 2.0))
    torch.testing.assert_close(a.merge(b).compute(), want, rtol=1e-9, atol=1e-12)
    m, n, _, _ = _two_minibatch(2.0, (2.0, 2.0), matrix=True)  # one σ for all = the same σ per representation
    m.merge(n)


# --- W6: saved states are validated before anything changes -------------------------------------------------------
def _linear_state(unbiased=False):
    x, y = correlated_pair(60, 5, 3, seed=21)
    acc = LinearCKA(unbiased=unbiased)
    acc.update(x[:30], y[:30])
    return acc, acc.state_dict(), x, y


def test_w6_shift_of_the_wrong_shape_is_refused():
    acc, sd, x, y = _linear_state()
    sd["shift"] = sd["shift"][:4]
    fresh = LinearCKA()
    with pytest.raises(ValueError, match=r"state_dict\['shift'\] has shape \(4,\), expected \(8,\)"):
        fresh.load_state_dict(sd)
    sd["shift"] = torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="shift"):
        fresh.load_state_dict(sd)


def test_w6_round_trip_still_exact_and_matches_the_reference():
    acc, sd, x, y = _linear_state(unbiased=True)
    resumed = LinearCKA(unbiased=True)
    resumed.load_state_dict(sd)
    resumed.update(x[30:], y[30:])
    torch.testing.assert_close(resumed.compute(), R.feature_space_linear_cka(x, y, unbiased=True), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("key", ["version", "n", "widths", "shift", "moments", "unbiased", "num_layers"])
def test_w6_a_missing_key_is_named(key):
    _, sd, _, _ = _linear_state()
    del sd[key]
    with pytest.raises(ValueError, match=f"no '{key}' entry"):
        LinearCKA().load_state_dict(sd)


@pytest.mark.parametrize("version", [0, 3, "2", None, 2.0, True])
def test_w6_the_version_is_checked(version):
    _, sd, _, _ = _linear_state()
    sd["version"] = version
    with pytest.raises(ValueError, match="version"):
        LinearCKA().load_state_dict(sd)


def test_w6_version_1_states_still_load():
    acc, sd, x, y = _linear_state(unbiased=True)
    sd["version"] = 1
    sd["debiased"] = sd.pop("unbiased")
    old = LinearCKA(unbiased=True)
    old.load_state_dict(sd)
    assert torch.equal(old.compute(), acc.compute())


@pytest.mark.parametrize("edit,match", [
    (lambda sd: sd.update(n=sd["n"] + 1), "moments count"),
    (lambda sd: sd.update(n=-1), "'n'"),
    (lambda sd: sd.update(n=True), "'n'"),
    (lambda sd: sd.update(widths=(5, 2)), "moments"),
    (lambda sd: sd.update(widths=(5, 3, 1)), "widths"),
    (lambda sd: sd.update(moments=sd["moments"][:-1]), "moments"),
    (lambda sd: sd.update(moments=sd["moments"].long()), "floating-point"),
    (lambda sd: sd.update(unbiased="no"), "unbiased"),
    (lambda sd: sd.update(num_layers=3), "3 representations"),
])
def test_w6_edited_linear_states_are_refused(edit, match):
    acc, sd, _, _ = _linear_state()
    edit(sd)
    target = LinearCKA()
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(sd)
    with pytest.raises(TypeError, match="mapping"):
        target.load_state_dict([("n", 1)])


@pytest.mark.parametrize("edit,match", [
    (lambda sd: sd.update(hsic=torch.zeros(3, 3, dtype=torch.float64)), "hsic"),
    (lambda sd: sd.update(hsic=sd["hsic"][:1]), "hsic"),
    (lambda sd: sd.update(widths=(4,)), "widths"),
    (lambda sd: sd.update(batches=0), "batches"),
    (lambda sd: sd.pop("batches"), "no 'batches' entry"),
    (lambda sd: sd.update(version=99), "version"),
])
def test_w6_edited_minibatch_states_are_refused(edit, match):
    a, _, _, _ = _two_minibatch(2.0, 2.0)
    sd = a.state_dict()
    edit(sd)
    with pytest.raises(ValueError, match=match):
        MinibatchCKA(kernel="rbf", sigma=2.0).load_state_dict(sd)


# --- W7: the torchmetrics states stay float64 ---------------------------------------------------------------------
@pytest.mark.parametrize("cast", [
    lambda m: m.to(torch.float16), lambda m: m.half(), lambda m: m.to(torch.bfloat16), lambda m: m.bfloat16(),
    lambda m: m.set_dtype(torch.float16), lambda m: m.set_dtype(torch.bfloat16), lambda m: m.to("cpu", torch.half),
])
@pytest.mark.parametrize("unbiased", [False, True])
def test_w7_torchmetrics_states_stay_float64_under_dtype_casts(cast, unbiased):
    pytest.importorskip("torchmetrics")
    from fastcka.integrations.torchmetrics import CKA

    x, y = correlated_pair(300, 6, 4, seed=22)
    x, y = x * 300 + 1e3, y * 300 - 2e3  # moments of ~1e12: float16 overflows, bfloat16 loses digits
    m = CKA(unbiased=unbiased)
    m.update(x[:100], y[:100])
    m = cast(m)
    m.update(x[100:200].half(), y[100:200].half())
    m = cast(m)
    m.update(x[200:], y[200:])
    assert all(p.dtype == torch.float64 for p in m.packs)
    xs = torch.cat([x[:100], x[100:200].half().double(), x[200:]])
    ys = torch.cat([y[:100], y[100:200].half().double(), y[200:]])
    torch.testing.assert_close(m.compute(), R.feature_space_linear_cka(xs, ys, unbiased=unbiased), rtol=1e-9,
                               atol=1e-12)


# --- W11: a huge value in a LinearCKAMatrix stays in its row and column -------------------------------------------
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("big", [1e200, 1e160, float("inf")])
def test_w11_one_huge_value_spoils_only_its_row_and_column(unbiased, big):
    g = torch.Generator().manual_seed(23)
    reps = [torch.randn(30, w, generator=g, dtype=torch.float64) for w in (3, 4, 2)]
    reps[1] = reps[1] + reps[0][:, :1]
    dirty = [r.clone() for r in reps]
    dirty[1][5, 2] = big
    acc = LinearCKAMatrix(unbiased=unbiased)
    acc.update(*(r[:12] for r in dirty))
    other = LinearCKAMatrix(unbiased=unbiased)  # a merge re-shifts: the huge value must not spread there either
    other.update(*(r[12:] for r in dirty))
    m = acc.merge(other).compute()
    assert m[1].isnan().all() and m[:, 1].isnan().all()
    keep = [0, 2]
    for i in keep:
        for j in keep:
            want = 1.0 if i == j else R.feature_space_linear_cka(reps[i], reps[j], unbiased=unbiased).item()
            assert abs(m[i, j].item() - want) < 1e-10


@pytest.mark.parametrize("scale", [1e150, 1e-150])
def test_w11_extreme_but_finite_scales_keep_their_value(scale):
    # CKA is scale invariant; moments of 1e300 (or 1e-300) must not overflow (or underflow) into NaN or 0
    g = torch.Generator().manual_seed(24)
    reps = [torch.randn(30, w, generator=g, dtype=torch.float64) for w in (3, 4)]
    reps[1] = reps[1] + reps[0][:, :1]
    acc = LinearCKAMatrix()
    acc.update(reps[0], reps[1] * scale)
    torch.testing.assert_close(acc.compute()[0, 1], R.feature_space_linear_cka(reps[0], reps[1]), rtol=1e-10,
                               atol=0)


# --- smaller: the accumulators take what cka takes ----------------------------------------------------------------
@pytest.mark.parametrize("make", [LinearCKA, MinibatchCKA, lambda: LinearCKAMatrix(2), lambda: MinibatchCKAMatrix(2)])
def test_streaming_refuses_what_cka_refuses(make):
    x = torch.randn(8, 3)
    for bad, err, match in [(torch.ones(8, 3, dtype=torch.int64), TypeError, "floating-point"),
                            (torch.ones(8, 3, dtype=torch.bool), TypeError, "floating-point"),
                            (torch.ones(8, 0), ValueError, "no features")]:
        with pytest.raises(err, match=match):
            fastcka.cka(bad, x)
        with pytest.raises(err, match=match):
            make().update(bad, x)
        with pytest.raises(err, match=match):
            make().update(x, bad)


# --- issue 22: unbiased= everywhere, debiased= deprecated ---------------------------------------------------------
def test_debiased_is_a_deprecated_alias_of_unbiased():
    x, y = correlated_pair(40, 4, 3, seed=25)
    for cls in (LinearCKA, lambda **kw: LinearCKAMatrix(2, **kw)):
        with pytest.warns(DeprecationWarning, match=r"debiased= is deprecated.*use unbiased="):
            old = cls(debiased=True)
        new = cls(unbiased=True)
        old.update(x, y)
        new.update(x, y)
        assert torch.equal(old.compute(), new.compute()) and old.unbiased is True
        with pytest.warns(DeprecationWarning, match=r"\.debiased is deprecated"):
            assert old.debiased is True
        with pytest.raises(TypeError, match="both unbiased= and its deprecated name debiased="):
            cls(unbiased=True, debiased=True)
        with pytest.raises(TypeError, match="unbiased must be True or False"):
            cls(unbiased="no")
    with pytest.warns(DeprecationWarning, match="debiased="):
        torch.testing.assert_close(R.feature_space_linear_cka(x, y, debiased=True),
                                   R.feature_space_linear_cka(x, y, unbiased=True))


def test_torchmetrics_debiased_is_a_deprecated_alias():
    pytest.importorskip("torchmetrics")
    from fastcka.integrations.torchmetrics import CKA

    with pytest.warns(DeprecationWarning, match="debiased="):
        m = CKA(debiased=True)
    assert m.unbiased is True
    with pytest.raises(TypeError, match="unbiased must be True or False"):
        CKA(unbiased="no")
