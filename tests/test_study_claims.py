"""The real-CIFAR study's claim verdicts (tfadv/studies/claims.py): a difference counts only beyond two standard
errors of independent binomial rates, in the direction the paper claims; a missing row is "pending"."""

import math

import pytest

from tfadv.studies import claims as study_claims


def _row(clean, pgd20, aa, best_ra=None, minutes=10.0, n=660, aa_n=300, warned=()):
    return {"clean": clean, "pgd20": pgd20, "n": n, "aa": aa, "aa_n": aa_n, "best_ra": best_ra, "best_epoch": 20,
            "warned": list(warned), "minutes": minutes, "epochs": 25}


def test_standard_error_and_verdicts():
    assert study_claims.se(0.3, 660) == pytest.approx(math.sqrt(0.21 / 660))
    assert study_claims.verdict(0.05, 0.02) == "reproduced"
    assert study_claims.verdict(0.03, 0.02) == "not reproduced (within 2 SE)"
    assert study_claims.verdict(-0.05, 0.02) == "not reproduced (opposite)"
    assert study_claims.combine(["reproduced", "not reproduced (opposite)"]) == "mixed"
    assert study_claims.combine(["reproduced", "pending"]) == "pending"


def test_claims_from_rows():
    labels = {"natural": "natural", "pgd": "PGD-AT", "bat": "BAT", "ls_als": "ALS", "pgd_ls_als": "PGD-AT + ALS"}
    rows = {"natural": _row(0.80, 0.00, 0.00), "pgd": _row(0.45, 0.30, 0.26, best_ra=0.36, minutes=24),
            "bat": _row(0.50, 0.33, 0.27, minutes=7), "ls_als": _row(0.78, 0.20, 0.01)}
    found = {claim: (evidence, verdict) for claim, evidence, verdict in study_claims.claims(rows, labels)}
    # 6 points of robust overfitting on 660 images: beyond 2 SE of the difference (2 * sqrt(2) * 1.8 = 5.0)
    assert found["001: PGD-AT overfits robustly (best-checkpoint RA > final RA)"][1] == "reproduced"
    # BAT: PGD-20 +3 points (within 2 SE: fine, "matches"), AA +1, 0.29 of the time
    assert found["002: BAT (one step) matches or beats PGD-AT under PGD-20 and AutoAttack at about a third of the "
                 "cost"][1] == "reproduced"
    als = found["003/004: ALS alone gains PGD-20 robustness over natural training; does AutoAttack confirm it?"]
    assert als[1] == "mixed" and "AA 1.0" in als[0]  # PGD-20 gained, AutoAttack does not confirm it
    assert found["003/004: ALS on top of PGD-AT raises robustness"][1] == "pending"
