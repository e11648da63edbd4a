"""The evaluate stage's headline figures carry the random-init baseline under the same names (issue 21)."""

from __future__ import annotations

from tasks.evaluate import headline


def _results(knn: float, mse: float, pck: float) -> dict:
    return {"knn": {"syn": {"cls": {10: knn - 0.1, 20: knn}, "patch_mean": {10: knn, 20: knn}}},
            "linear": {"syn": {"cls": knn}},
            "overcluster": {"syn": {"classes": 9, "raw": {"K=9": 0.3, "K=27": 0.4}}},
            "position": {"syn": {"raw": {"mse": mse, "chance": 0.1071}}},
            "ood": {"in": "a", "out": "b", "k": 10, "auroc": pck, "fpr95": 0.5}}


def test_headline__baseline_entry_for_every_metric_under_the_same_name() -> None:
    report = {"results": _results(0.8, 0.05, 0.9), "baseline": _results(0.3, 0.1, 0.5),
              "matryoshka_retained": {"syn": {"d": 3, "D": 192, "knn": 0.5, "linear": 0.25,
                                              "random_init": {"knn": 0.9, "linear": 1.0}}}}
    out = headline(report)
    own = {k for k in out if not k.startswith("baseline.")}
    assert {k.removeprefix("baseline.") for k in out if k.startswith("baseline.")} == own
    assert out["knn_top1.syn.cls"] == 0.8 and out["baseline.knn_top1.syn.cls"] == 0.3
    assert out["baseline.position_mse.syn.raw"] == 0.1 and out["baseline.ood.auroc"] == 0.5
    assert out["matryoshka_retained.syn.knn"] == 0.5 and out["baseline.matryoshka_retained.syn.linear"] == 1.0


def test_headline__no_baseline_no_baseline_entries() -> None:
    assert not any(k.startswith("baseline.") for k in headline({"results": _results(0.8, 0.05, 0.9)}))
