"""Paired statistics between two models: scipy as the oracle, the paper's relative gain by hand."""
import numpy as np
import pytest
from scipy import stats as sps

from radimagenet_jax.evaluate import paired as stats

# Fixed paired Dice values (12 images): A is better on average.
A = np.array([0.31, 0.12, 0.45, 0.27, 0.05, 0.38, 0.22, 0.40, 0.18, 0.33, 0.29, 0.26])
B = np.array([0.20, 0.15, 0.30, 0.22, 0.01, 0.25, 0.10, 0.35, 0.16, 0.21, 0.18, 0.24])


def test_describe_mean_and_sample_sd():
  d = stats.describe([1.0, 2.0, 4.0])
  assert d == {"n": 3, "mean": pytest.approx(7 / 3),
               "sd": pytest.approx(np.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))}
  assert stats.describe([0.5]) == {"n": 1, "mean": 0.5, "sd": None}
  assert stats.describe([]) == {"n": 0, "mean": None, "sd": None}


def test_relative_gain_as_the_paper():
  # Thyroid Dice in the paper: 0.29 (RadImageNet) vs 0.18 (ImageNet) -> +61.1 %.
  assert stats.relative_gain(0.29, 0.18) == pytest.approx(0.11 / 0.18)
  assert stats.relative_gain(0.14, 0.16) == pytest.approx(-0.125)
  assert stats.relative_gain(0.1, 0.0) is None


def test_paired_comparison_matches_scipy():
  out = stats.paired_comparison(A, B, names=("RadImageNet", "ImageNet"))
  assert out["n"] == 12
  assert out["RadImageNet"]["mean"] == pytest.approx(A.mean())
  assert out["ImageNet"]["sd"] == pytest.approx(B.std(ddof=1))
  assert out["difference"]["mean"] == pytest.approx((A - B).mean())
  w, p = sps.shapiro(A - B)
  assert out["shapiro"]["statistic"] == pytest.approx(w) and out["shapiro"]["pvalue"] == pytest.approx(p)
  t = sps.ttest_rel(A, B)
  assert out["ttest_rel"]["statistic"] == pytest.approx(t.statistic)
  assert out["ttest_rel"]["pvalue"] == pytest.approx(t.pvalue) and out["ttest_rel"]["df"] == 11
  # The t statistic by hand: mean(d) / (sd(d) / sqrt(n)).
  d = A - B
  assert out["ttest_rel"]["statistic"] == pytest.approx(d.mean() / (d.std(ddof=1) / np.sqrt(12)))
  wx = sps.wilcoxon(A, B)
  assert out["wilcoxon"]["pvalue"] == pytest.approx(wx.pvalue)
  assert out["relative_gain"] == pytest.approx((A.mean() - B.mean()) / B.mean())
  assert out["recommended_test"] == ("wilcoxon" if p < 0.05 else "ttest_rel")


def test_non_normal_differences_recommend_wilcoxon():
  # One huge outlier among small differences: Shapiro-Wilk rejects normality.
  b = np.linspace(0.1, 0.3, 15)
  a = b + np.r_[np.full(14, 0.01) + np.arange(14) * 1e-4, 0.6]
  out = stats.paired_comparison(a, b)
  assert out["shapiro"]["normality_rejected"] and out["recommended_test"] == "wilcoxon"
  assert out["shapiro"]["pvalue"] == pytest.approx(sps.shapiro(a - b).pvalue)


def test_degenerate_inputs():
  same = stats.paired_comparison([0.2, 0.3, 0.4], [0.2, 0.3, 0.4])
  assert same["shapiro"] is None and same["ttest_rel"] is None and same["wilcoxon"] is None
  assert same["relative_gain"] == 0.0
  with pytest.raises(ValueError, match=r"equal length; got shapes \(3,\) and \(2,\)"):
    stats.paired_comparison([1, 2, 3], [1, 2])


def test_per_patient_means_before_the_paired_test():
  """Four images per patient: the tests run on the 3 patient means (scipy on means by hand)."""
  patients = [f"p{i // 4}" for i in range(12)]
  out = stats.paired_comparison(A, B, names=("RadImageNet", "ImageNet"), patients=patients)
  ma, mb = A.reshape(3, 4).mean(axis=1), B.reshape(3, 4).mean(axis=1)
  assert out["unit"] == "patient" and out["n"] == 3 and out["n_images"] == 12
  assert out["RadImageNet"]["mean"] == pytest.approx(ma.mean())
  t = sps.ttest_rel(ma, mb)
  assert out["ttest_rel"]["pvalue"] == pytest.approx(t.pvalue) and out["ttest_rel"]["df"] == 2
  assert out["wilcoxon"]["pvalue"] == pytest.approx(sps.wilcoxon(ma, mb).pvalue)
  # Interleaved patients: grouping is by id, not by position.
  mixed = [f"p{i % 3}" for i in range(12)]
  got = stats.paired_comparison(A, B, patients=mixed)
  assert got["difference"]["mean"] == pytest.approx(
      np.mean([(A - B)[i::3].mean() for i in range(3)]))
  assert stats.paired_comparison(A, B)["unit"] == "image"
  with pytest.raises(ValueError, match="one entry per value; got 2 for 12"):
    stats.paired_comparison(A, B, patients=["x", "y"])
