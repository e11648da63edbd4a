"""The evaluation suite: every protocol of FRANCA_METHOD.md "Evaluation protocols" over named image sets.

Reference: Franca (arXiv 2507.14137) section 5 and ``valeoai/Franca: franca/eval/`` (k-NN, linear, in-context,
overclustering, OOD). Features of each set are computed once (``cache.cached_features``); RASA, being a linear map
after the final norm, is applied to the cached patch tokens, so one backbone pass serves both the "raw" and the
"rasa" variants. Protocols, and what they need:

- ``knn``, ``linear``, ``matryoshka``: image-level labels (CLS; k-NN also on mean-pooled patch tokens);
- ``overcluster`` (test split), ``incontext`` (train bank, test queries), ``position``: segmentation masks;
- ``ood``: ``cfg.ood_in`` and ``cfg.ood_out`` naming two set groups;
- ``correspondence``: images only (each group's test split, warped by seeded random homographies; raw and rasa);
- ``depth``: ``cfg.depth`` naming sets with depth maps (``franca_core.eval.depth``; paired like the image sets).

With ``cfg.tasks == ["auto"]`` a protocol runs wherever its inputs exist and is otherwise listed under
``skipped`` with the reason; a protocol asked for by name raises ``ValueError`` naming what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from franca_core.config import EvalConfig, RasaConfig
from franca_core.eval.cache import cached_features, model_digest
from franca_core.eval.correspondence import keypoint_correspondence
from franca_core.eval.data import EvalSet
from franca_core.eval.depth import DepthSet, depth_probe, open_depth_sets
from franca_core.eval.incontext import incontext_miou
from franca_core.eval.knn import knn_accuracies
from franca_core.eval.linear import linear_probe
from franca_core.eval.matryoshka import matryoshka_dims, truncation_table
from franca_core.eval.ood import ood_detection
from franca_core.eval.overcluster import overcluster, overcluster_ks
from franca_core.eval.position_probe import position_probe_on
from franca_core.eval.splits import Pair, pair_sets, row_split

TASKS = ("knn", "linear", "matryoshka", "overcluster", "incontext", "position", "ood", "correspondence", "depth")
Feats = dict[str, torch.Tensor]


class EvalSuite:
    """Runs the protocols of ``cfg`` on ``sets`` with ``model`` (a backbone with ``forward_masked``).

    Args:
        model: the raw backbone (no RASA wrapper); ``rasa_matrix`` (D, D) adds the "rasa" variants.
        sets: name -> ``EvalSet``; names pair into splits (``franca_core.eval.splits``).
        n_levels: Matryoshka levels of the model's heads (for the truncation dimensions).
        cache_dir: feature cache folder (None: no disk cache).
    """

    def __init__(self, model: nn.Module, sets: dict[str, EvalSet], cfg: EvalConfig, rasa_cfg: RasaConfig,
                 n_levels: int = 5, rasa_matrix: torch.Tensor | None = None, cache_dir: str | None = None,
                 log: Callable[[str], None] = print) -> None:
        if not sets:
            raise ValueError("no evaluation sets given (e.g. --data tinyimagenet-val=PATH)")
        unknown = [t for t in cfg.tasks if t != "auto" and t not in TASKS]
        if unknown:
            raise ValueError(f"unknown evaluation task(s) {unknown}. Valid: {['auto', *TASKS]}")
        self.model, self.sets, self.cfg, self.rasa_cfg = model.eval(), sets, cfg, rasa_cfg
        self.n_levels, self.matrix, self.cache_dir, self.log = n_levels, rasa_matrix, cache_dir, log
        self.pairs = pair_sets(list(sets))
        self.depth_sets: dict[str, DepthSet] = open_depth_sets(cfg.depth, int(getattr(model, "patch_size", 0)), cfg)
        clash = sorted(set(self.depth_sets) & set(sets))
        if clash:
            raise ValueError(f"eval.depth set name(s) {clash} are also evaluation set names; name them apart")
        self.depth_pairs = pair_sets(list(self.depth_sets))
        self.digest = model_digest(model)
        self._feats: dict[str, Feats] = {}
        self.timing: dict[str, float] = {"features_s": 0.0, "images_extracted": 0}
        self.figures: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ features
    def features(self, name: str) -> Feats:
        if name not in self._feats:
            evalset = self.sets[name] if name in self.sets else self.depth_sets[name]
            t0, info = time.perf_counter(), {"hit": False}
            feats = cached_features(self.model, evalset, self.cache_dir, self.cfg.batch_size,
                                    keep_patches=evalset.has_masks or name in self.depth_sets, digest=self.digest,
                                    info=info)
            if not info["hit"]:  # a cache hit is not a measurement of extraction speed
                self.timing["features_s"] += time.perf_counter() - t0
                self.timing["images_extracted"] += len(evalset)
            self._feats[name] = feats
        return self._feats[name]

    def split(self, pair: Pair) -> tuple[Feats, Feats]:
        if not pair.self_split:
            return self.features(pair.train), self.features(pair.test)
        feats = self.features(pair.train)
        tr, te = (torch.from_numpy(i) for i in row_split(len(feats["labels"]), self.cfg.seed))
        return {k: v[tr] for k, v in feats.items()}, {k: v[te] for k, v in feats.items()}

    def _variants(self, patch: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"raw": patch}
        if self.matrix is not None:
            out["rasa"] = (patch.float() @ self.matrix).to(patch.dtype)
        return out

    # -------------------------------------------------------------------------------------------- planning
    def _eligible(self, task: str) -> tuple[list[Pair], str]:
        """Pairs a task can run on, and the reason when there are none."""
        if task == "ood":
            if not (self.cfg.ood_in and self.cfg.ood_out):
                return [], "needs eval.ood_in and eval.ood_out (in-distribution and OOD set groups)"
            groups = {p.group: p for p in self.pairs}
            missing = [g for g in (self.cfg.ood_in, self.cfg.ood_out) if g not in groups]
            if missing:
                return [], f"OOD set group(s) {missing} not among the sets {sorted(groups)}"
            return [groups[self.cfg.ood_in], groups[self.cfg.ood_out]], ""
        if task == "correspondence":  # images are all it needs
            return list(self.pairs), ""
        if task == "depth":
            return self.depth_pairs, "needs eval.depth (image sets with depth maps; none ships)"
        need_masks = task in ("overcluster", "incontext", "position")
        has = (lambda n: self.sets[n].has_masks) if need_masks else (lambda n: self.sets[n].has_labels)
        ok, missing = [], []
        for pair in self.pairs:
            bad = [n for n in dict.fromkeys([pair.train, pair.test]) if not has(n)]
            missing += bad
            if not bad:
                ok.append(pair)
        need = "segmentation masks" if need_masks else "image-level labels (every row, 2+ classes)"
        return ok, f"needs {need}, which set(s) {missing} do not have"

    def plan(self) -> tuple[dict[str, list[Pair]], dict[str, str]]:
        """Which task runs on which pairs; for "auto", the skipped tasks and why."""
        auto = "auto" in self.cfg.tasks
        wanted = TASKS if auto else tuple(dict.fromkeys(self.cfg.tasks))
        runs, skipped = {}, {}
        for task in wanted:
            pairs, reason = self._eligible(task)
            if pairs:
                runs[task] = pairs
            elif auto:
                skipped[task] = reason
            else:
                raise ValueError(f"evaluation task '{task}' cannot run: it {reason}")
        return runs, skipped

    # ------------------------------------------------------------------------------------------ protocols
    def knn(self, pair: Pair) -> dict[str, Any]:
        tr, te = self.split(pair)
        out = {}
        for key, a, b in (("cls", tr["cls"], te["cls"]), ("patch_mean", tr["patch_mean"], te["patch_mean"])):
            out[key] = knn_accuracies(a, tr["labels"], b, te["labels"], self.cfg.knn_k, self.cfg.knn_temperature)
        if self.matrix is not None:  # mean of projected tokens == projection of the mean (linear map)
            out["patch_mean_rasa"] = knn_accuracies(tr["patch_mean"] @ self.matrix, tr["labels"],
                                                    te["patch_mean"] @ self.matrix, te["labels"],
                                                    self.cfg.knn_k, self.cfg.knn_temperature)
        return out

    def linear(self, pair: Pair) -> dict[str, float]:
        tr, te = self.split(pair)
        c = self.cfg
        out = {"cls": linear_probe(tr["cls"], tr["labels"], te["cls"], te["labels"], c.linear_c, c.linear_max_iter,
                                   c.seed)}
        if c.linear_with_patch_mean:
            out["cls+patch_mean"] = linear_probe(torch.cat([tr["cls"], tr["patch_mean"]], 1), tr["labels"],
                                                 torch.cat([te["cls"], te["patch_mean"]], 1), te["labels"],
                                                 c.linear_c, c.linear_max_iter, c.seed)
        return out

    def matryoshka(self, pair: Pair) -> dict[str, Any]:
        tr, te = self.split(pair)
        dims = matryoshka_dims(tr["cls"].shape[1], self.n_levels)
        k = 20 if 20 in self.cfg.knn_k else self.cfg.knn_k[0]
        table = truncation_table(tr["cls"], tr["labels"], te["cls"], te["labels"], dims, k, self.cfg.knn_temperature,
                                 self.cfg.matryoshka_linear, self.cfg.linear_c, self.cfg.linear_max_iter,
                                 self.cfg.seed)
        return {"dims": dims, "knn_k": k, **table}

    def overcluster(self, pair: Pair) -> dict[str, Any]:
        _, te = self.split(pair)
        s = self.sets[pair.test]
        n_cls, keep = s.n_mask_classes, self._keep(pair)
        out: dict[str, Any] = {"classes": n_cls}
        for variant, patch in self._variants(te["patch"]).items():
            res = overcluster(patch, te["masks"], n_cls, overcluster_ks(n_cls, self.cfg.overcluster_factors),
                              s.ignore_index, self.cfg.pca_dim, self.cfg.kmeans_max_tokens, self.cfg.seed,
                              self.cfg.kmeans_n_init, keep=keep)
            out[variant] = {f"K={k}": v for k, v in res["miou"].items()}
            if keep and variant == "raw":
                self.figures["overcluster"] = res["predictions"][n_cls]
        return out

    def incontext(self, pair: Pair) -> dict[str, Any]:
        tr, te = self.split(pair)
        s, c = self.sets[pair.test], self.cfg
        n_cls, keep = s.n_mask_classes, self._keep(pair)
        out: dict[str, Any] = {"classes": n_cls}
        train_variants = self._variants(tr["patch"])
        for variant, patch in self._variants(te["patch"]).items():
            res = incontext_miou(train_variants[variant], tr["masks"], patch, te["masks"], n_cls, s.ignore_index,
                                 c.incontext_k, c.incontext_temperature, c.incontext_bank_size, c.seed, keep=keep)
            out[variant] = res["miou"]
            if keep and variant == "raw":
                self.figures["incontext"] = res["predictions"]
        return out

    def position(self, pair: Pair) -> dict[str, Any]:
        _, te = self.split(pair)
        out = {"raw": position_probe_on(te["patch"], self.rasa_cfg, self.cfg.seed)}
        if self.matrix is not None:
            out["rasa"] = position_probe_on(te["patch"], self.rasa_cfg, self.cfg.seed, self.matrix)
        return out

    def ood(self, pair_in: Pair, pair_out: Pair) -> dict[str, Any]:
        bank, queries_in = self.split(pair_in)
        # OOD queries at the in-distribution geometry: the score should see other content, not another resolution
        size = self.sets[pair_in.test].image_size
        out_set = self.sets[pair_out.test]
        name = pair_out.test if out_set.image_size == size else f"{pair_out.test}@{size[0]}x{size[1]}"
        if name not in self.sets:
            self.sets[name] = out_set.at_size(size)
        queries_out = self.features(name)
        if pair_out.self_split:
            queries_out = {k: v[torch.from_numpy(self._test_rows(len(v)))] for k, v in queries_out.items()}
        res = ood_detection(bank["cls"], queries_in["cls"], queries_out["cls"], self.cfg.ood_k)
        return {"in": pair_in.group, "out": pair_out.group, "k": self.cfg.ood_k, "image_size": list(size), **res}

    def correspondence(self, pair: Pair) -> dict[str, Any]:
        s = self.sets[pair.test]
        rows = self._test_rows(len(s)) if pair.self_split else range(len(s))
        rows = [int(r) for r in rows][: self.cfg.correspondence_images]
        return keypoint_correspondence(self.model, s, rows, self.cfg.correspondence_warp, self.cfg.seed,
                                       self.cfg.batch_size, self._variants)

    def depth(self, pair: Pair) -> dict[str, Any]:
        tr, te = self.split(pair)
        depths = self.depth_sets[pair.train].patch_depths()
        if pair.self_split:
            rows = [torch.from_numpy(r) for r in row_split(len(depths), self.cfg.seed)]
            depth_tr, depth_te = depths[rows[0]], depths[rows[1]]
        else:
            depth_tr, depth_te = depths, self.depth_sets[pair.test].patch_depths()
        c, out, res = self.cfg, {}, {}
        test_variants = self._variants(te["patch"])
        for variant, patch in self._variants(tr["patch"]).items():
            res = depth_probe(patch, depth_tr, test_variants[variant], depth_te, c.depth_ridge, c.depth_max_patches,
                              c.seed)
            out[variant] = res["probe"]
        return {**out, "mean_predictor": res["mean_predictor"], "patches": res["patches"]}

    def _test_rows(self, n: int) -> Any:
        return row_split(n, self.cfg.seed)[1]

    def _keep(self, pair: Pair) -> int:
        """Images to keep predictions of (figures): the first mask group only."""
        first = self.figures.setdefault("group", pair.group) == pair.group
        return min(self.cfg.figure_images, 8) if first else 0

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        """All planned protocols; returns the JSON-ready report (figures stay in ``self.figures``)."""
        runs, skipped = self.plan()
        results: dict[str, Any] = {}
        extract = {t: pairs for t, pairs in runs.items() if t != "correspondence"}  # it runs its own passes
        for name in dict.fromkeys(n for pairs in extract.values() for p in pairs for n in (p.train, p.test)):
            self.features(name)  # extract first, so the task timings are the protocols alone
        for task, pairs in runs.items():
            t0 = time.perf_counter()
            self.log(f"eval: {task} on {sorted({p.group for p in pairs})}")
            if task == "ood":
                results[task] = self.ood(*pairs)
            else:
                results[task] = {p.group: getattr(self, task)(p) for p in pairs}
            self.timing[f"{task}_s"] = round(time.perf_counter() - t0, 2)
        t: dict[str, Any] = self.timing  # gains features_per_s, which may be None
        t["features_per_s"] = round(t["images_extracted"] / t["features_s"], 2) if t["features_s"] else None
        return {
            "model": {"digest": self.digest[:16], "embed_dim": int(getattr(self.model, "embed_dim", 0)),
                      "patch_size": int(getattr(self.model, "patch_size", 0)), "rasa": self.matrix is not None},
            "sets": {n: {"path": str(s.path), "images": len(s), "image_size": list(s.image_size),
                         "labels": s.has_labels, "masks": s.has_masks, "depth": n in self.depth_sets}
                     for n, s in {**self.sets, **self.depth_sets}.items() if "@" not in n},
            "pairs": [vars(p) for p in self.pairs],
            "results": results, "skipped": skipped, "timing": t,
        }
