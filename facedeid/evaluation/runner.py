"""The evaluation loop: detect on originals → de-identify → privacy, utility and quality metrics.

Protocol (why each step is the way it is):

1. Faces are located on the **originals** by one
   :class:`~facedeid.detection.locate.FaceLocator` per run (detection plus its second chance),
   and the face of each image is :func:`~facedeid.detection.locate.main_face` (the project's
   one rule: largest box, ties by score). That known location is used everywhere after: the
   method de-identifies exactly that face (through the
   same :class:`~facedeid.pipeline.Anonymizer` as ``facedeid anonymize``), and the attacker
   embeds the output at the original's box with landmarks located on the original — a detector
   that fails on the output is not privacy. Originals without a detected face are excluded
   and counted.
2. Privacy per recognizer (:mod:`facedeid.evaluation.privacy`): identity distance, SDR at the
   recognizer's threshold (book Eq. 3.2), rank-1 with (a) the probe-set originals as gallery
   (EEAE's protocol, own original included) and (b) *other* photos of the same people (a linking
   attack), and TAR at fixed FAR on the probe × linking-gallery pairs.
   Attackers by default: dlib and faceres. Each is marked "seen in training" for a method that
   optimised against it (``DeidMethod.trained_with``), else "independent".
   **Parrot attack** (Newton et al.): the attacker runs the same public method with the same
   parameters and a fresh seed over its gallery (the probe-set originals, and the linking
   gallery) and matches de-identified probes against de-identified gallery photos.
   **Restored** (optional): a callable given to :class:`Evaluator` maps de-identified outputs
   to restored images (e.g. a trained restoration network); they are matched against the
   original galleries.
3. Utility through the service evaluators (:mod:`facedeid.evaluation.services`), original vs
   output, and image quality (:mod:`facedeid.evaluation.quality`).

A method that raises on one image is recorded as a failure of that image and the rest goes on;
that face counts as **not protected** in every privacy figure (it stays in the denominator, its
"output" is the original: identity distance 0, never de-identified, always identified when its
person is in the gallery). Utility and quality are measured over the outputs that exist.

Identity-disjoint protocol: CelebA-layout datasets are split with ``identity_split_disjoint.txt``
where it exists (celeba-id200: 40 test people no project model was trained on). The linking
gallery is other photos of the probes' people: photos outside the probe set first, then the
other probes (a probe is never matched with its own photo).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..detection import Face, FaceDetector
from ..detection.locate import FaceLocator, main_face
from ..errors import FaceDeidError, InvalidParameterError
from ..io.datasets import FaceDataset, FaceRecord, load_dataset
from ..methods.registry import format_spec, parse_spec
from . import privacy, quality
from .recognizers import EmbeddingCache, FaceRecognizer, create_recognizer, file_digest

log = logging.getLogger(__name__)

DEFAULT_FARS = (1e-2, 1e-3)
DEFAULT_SERVICES = ("expression", "attributes", "detection", "age_gender")
DEFAULT_RECOGNIZERS = ("dlib", "faceres")
#: the parrot attacker's seed is the evaluation seed plus this: a fresh seed, reproducibly
PARROT_SEED_OFFSET = 7919
INDEPENDENT, SEEN_IN_TRAINING = "independent", "seen in training"

#: ``restorer(spec, deidentified_images, boxes) -> restored images | None`` (None: no attacker
#: trained for this method); boxes are the original face boxes, images keep their shapes.
Restorer = Callable[["MethodSpec", list, list], "list[np.ndarray] | None"]


@dataclass(frozen=True)
class MethodSpec:
    """A method and its parameters, e.g. parsed from ``"blur:kernel_size=31,sigma=4"``."""

    method: str
    params: tuple[tuple[str, str], ...] = ()
    label: str = ""

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        """``NAME`` or ``NAME:k=v,k=v`` (``label=...`` names the row in the report)."""
        name, params = parse_spec(text)
        label = params.pop("label", "")
        return cls(name, tuple(params.items()), label)

    @property
    def title(self) -> str:
        return self.label or format_spec(self.method, self.params)


@dataclass
class EvalConfig:
    """Everything one evaluation run depends on (recorded in ``results.json``)."""

    dataset: str = "celeba-id200"
    split: str | None = "test"
    split_source: str = "disjoint"  # CelebA: identity_split_disjoint.txt where it exists
    limit: int | None = None
    data_root: str | None = None
    recognizers: Sequence[str | FaceRecognizer] = DEFAULT_RECOGNIZERS
    recognizer_params: dict = field(default_factory=dict)  # name -> kwargs
    services: Sequence[str] = DEFAULT_SERVICES
    service_crop: str = "haar"
    detector: str = "centerface"
    detector_params: dict = field(default_factory=dict)
    landmarks: str = "dlib68"
    expand: float = 1.3
    feather: float = 0.1
    mask_shape: str = "ellipse"
    seed: int = 0
    cache_dir: str | None = None
    gallery_per_identity: int | None = 10
    fars: Sequence[float] = DEFAULT_FARS
    fid_weights: str | None = None
    lpips_weights: str | None = None
    samples: int = 6
    progress: bool = True
    parrot: bool = True

    def to_dict(self) -> dict:
        out = {k: v for k, v in vars(self).items() if k != "recognizers"}
        out["recognizers"] = [r if isinstance(r, str) else r.name for r in self.recognizers]
        out["services"] = list(self.services)
        out["fars"] = list(self.fars)
        return out


@dataclass
class Probe:
    """An original image whose face was found: the unit every metric is computed over."""

    record: FaceRecord
    image: np.ndarray
    face: Face
    digest: str
    identity: str


def _progress(iterable, enabled: bool, **kwargs):
    from tqdm import tqdm
    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **kwargs)


class Evaluator:
    """Holds the models of one run; :meth:`run` evaluates several method specs on one dataset."""

    def __init__(self, config: EvalConfig):
        self.config = config
        # One locator for the run: originals, gallery and every method's Anonymizer share it
        # (models load once; every stage sees the same faces).
        self.locator = FaceLocator(config.detector, config.detector_params,
                                   landmarks=config.landmarks)
        self.detector: FaceDetector = self.locator.detector
        self.recognizers: list[FaceRecognizer] = [
            r if isinstance(r, FaceRecognizer)
            else create_recognizer(r, **config.recognizer_params.get(r, {}))
            for r in config.recognizers]
        if not self.recognizers:
            raise InvalidParameterError("at least one recognizer is needed for privacy metrics")
        self.cache = EmbeddingCache(config.cache_dir)
        # Names how the face of an original was chosen, in the embedding cache's key: entries
        # made under another rule (the old "largest" pick) are never reused.
        self.locator_key = (f"{config.detector}|{sorted(config.detector_params.items())}"
                            "|locator+main_face")
        self._gallery_embeddings: list[np.ndarray] = []

    # -- originals ----------------------------------------------------------------------------
    def _anonymizer(self, spec: MethodSpec):
        from ..pipeline import Anonymizer
        c = self.config
        # allow_weak: measuring how weak a setting is is the evaluator's job, so it never refuses
        return Anonymizer(method=spec.method, method_params=dict(spec.params),
                          detector=self.locator, landmarks=c.landmarks, expand=c.expand,
                          feather=c.feather, mask_shape=c.mask_shape, no_face="keep", seed=c.seed,
                          allow_weak=True)

    def prepare_probes(self, dataset: FaceDataset) -> tuple[list[Probe], dict]:
        """Load and locate every original; return the usable ones and what was excluded."""
        probes, no_face, unreadable = [], [], []
        for index, record in enumerate(_progress(dataset.records, self.config.progress,
                                                 desc="detect originals", unit="img")):
            try:
                image = record.load()
            except FaceDeidError as error:
                unreadable.append({"file": record.name, "error": str(error)})
                continue
            face = main_face(self.locator.locate(image))
            if face is None:
                no_face.append(record.name)
                continue
            identity = record.identity if record.identity is not None else f"#{index}"
            probes.append(Probe(record, image, face, file_digest(record.path), identity))
        info = {"records": len(dataset), "usable": len(probes), "excluded_no_face": len(no_face),
                "excluded_no_face_files": no_face, "unreadable": unreadable}
        return probes, info

    def embed_originals(self, recognizer: FaceRecognizer, probes: list[Probe]) -> np.ndarray:
        """Embeddings of the originals, from the cache where possible."""
        out: list[np.ndarray | None] = []
        missing = []
        for i, probe in enumerate(probes):
            hit = self.cache.get(probe.digest, recognizer.name, self.locator_key)
            if hit is not None and np.allclose(hit[1], probe.face.box, atol=0.5):
                out.append(hit[0])
            else:
                out.append(None)
                missing.append(i)
        for start in _progress(range(0, len(missing), 64), self.config.progress and len(missing) > 64,
                               desc=f"embed originals ({recognizer.name})", unit="batch"):
            chunk = missing[start:start + 64]
            embeddings = recognizer.embed([probes[i].image for i in chunk],
                                          [probes[i].face.box for i in chunk])
            for i, embedding in zip(chunk, embeddings):
                out[i] = embedding
                self.cache.put(probes[i].digest, recognizer.name, self.locator_key, embedding,
                               probes[i].face.box)
        return np.stack(out) if out else np.zeros((0, 0), np.float32)

    def linking_gallery(self, dataset_name: str, probes: list[Probe]) -> tuple[list[Probe], dict]:
        """Other photos of the probes' identities (not in the probe set): the linking gallery.

        Taken from the whole dataset (all splits), at most ``gallery_per_identity`` per person,
        in file order. For celeba-id200 with ``--split test`` these are train-split photos.
        """
        c = self.config
        real = {p.identity for p in probes if p.record.identity is not None}
        if not real:
            return [], {"size": 0, "note": "dataset has no identities"}
        full = load_dataset(dataset_name, split="all", data_root=c.data_root)
        used = {p.record.path for p in probes}
        per_identity: dict[str, int] = {}
        chosen = []
        for record in full.records:
            if record.identity not in real or record.path in used:
                continue
            if c.gallery_per_identity is not None and \
                    per_identity.get(record.identity, 0) >= c.gallery_per_identity:
                continue
            per_identity[record.identity] = per_identity.get(record.identity, 0) + 1
            chosen.append(record)
        gallery, no_face = [], 0
        need_detection = []
        for record in chosen:  # cached entries also give the box: no decoding or detection
            digest = file_digest(record.path)
            hits = [self.cache.get(digest, r.name, self.locator_key) for r in self.recognizers]
            if all(h is not None for h in hits):
                gallery.append((record, digest, [h[0] for h in hits], hits[0][1]))
            else:
                need_detection.append((record, digest))
        fresh = []
        for record, digest in _progress(need_detection, c.progress and bool(need_detection),
                                        desc="detect gallery", unit="img"):
            try:
                image = record.load()
            except FaceDeidError:
                no_face += 1
                continue
            face = main_face(self.locator.locate(image))
            if face is None:
                no_face += 1
                continue
            fresh.append(Probe(record, image, face, digest, record.identity))
        embeddings_fresh = [self.embed_originals(r, fresh) for r in self.recognizers] if fresh else []
        for i, probe in enumerate(fresh):
            gallery.append((probe.record, probe.digest, [e[i] for e in embeddings_fresh],
                            probe.face.box))
        entries = [Probe(record, None, Face(box=box), digest, record.identity)  # type: ignore[arg-type]
                   for record, digest, _, box in gallery]
        self._gallery_embeddings = [np.stack([g[2][k] for g in gallery]) if gallery
                                    else np.zeros((0, 0), np.float32)
                                    for k in range(len(self.recognizers))]
        info = {"size": len(entries), "identities": len({e.identity for e in entries}),
                "excluded_no_face": no_face, "per_identity_cap": c.gallery_per_identity,
                "source": "other photos of the probe identities in the whole dataset"}
        return entries, info

    # -- one method --------------------------------------------------------------------------
    def anonymize_all(self, spec: MethodSpec, probes: list[Probe]):
        anonymizer = self._anonymizer(spec)
        outputs, ok, failures = [], [], []
        for i, probe in enumerate(_progress(probes, self.config.progress, desc=spec.title[:24],
                                            unit="img")):
            face = Face(box=probe.face.box.copy(), score=probe.face.score,
                        landmarks=None if probe.face.landmarks is None else probe.face.landmarks.copy())
            try:
                result = anonymizer.anonymize(probe.image, faces=[face])
                outputs.append(result.image)
                ok.append(i)
            except Exception as error:  # noqa: BLE001 - any method bug is one image's failure
                failures.append({"file": probe.record.name, "error": f"{type(error).__name__}: {error}"})
        return outputs, ok, failures

    def privacy_metrics(self, recognizer_index: int, originals: np.ndarray, anonymized: np.ndarray,
                        probes: list[Probe], gallery: list[Probe]) -> dict:
        recognizer = self.recognizers[recognizer_index]
        metric = recognizer.metric
        ids = [p.identity for p in probes]
        distance = privacy.identity_distance(originals, anonymized, metric)
        out: dict[str, Any] = {
            "metric": metric, "tau": recognizer.threshold, "n": int(len(distance)),
            "identity_distance_mean": float(distance.mean()) if distance.size else float("nan"),
            "identity_distance_median": float(np.median(distance)) if distance.size else float("nan"),
            "cosine_distance_mean": float(privacy.identity_distance(originals, anonymized,
                                                                    "cosine").mean())
            if distance.size else float("nan"),
            "sdr": privacy.successful_deidentification_rate(distance, recognizer.threshold),
            "rank1_own_gallery": privacy.rank1_identification_rate(anonymized, ids, originals, ids,
                                                                   metric),
        }
        gallery_embeddings = self._gallery_embeddings[recognizer_index] if gallery else None
        if gallery_embeddings is not None and len(gallery_embeddings):
            gallery_ids = [g.identity for g in gallery]
            hits = privacy.rank1_hits(anonymized, ids, gallery_embeddings, gallery_ids, metric)
            out["rank1_linking"] = float(hits.mean()) if hits.size else float("nan")
            out["linking_probes"] = int(hits.size)
            genuine, impostor = privacy.genuine_impostor_distances(anonymized, ids, gallery_embeddings,
                                                                   gallery_ids, metric)
            pairs_from = "probe x linking gallery"
        else:
            out["rank1_linking"] = None
            out["linking_probes"] = 0
            genuine, impostor = privacy.genuine_impostor_distances(anonymized, ids, originals, ids,
                                                                   metric)
            pairs_from = "probe x probe-set originals"
        out["verification_pairs"] = {"genuine": int(genuine.size), "impostor": int(impostor.size),
                                     "from": pairs_from}
        out["tar_at_far"] = {}
        if genuine.size and impostor.size:
            for far in self.config.fars:
                tar, threshold = privacy.tar_at_far(genuine, impostor, far)
                out["tar_at_far"][f"{far:g}"] = {"tar": tar, "threshold": threshold}
        return out

    def run(self, specs: Sequence[MethodSpec]) -> dict:
        """Evaluate every spec; returns the ``results.json`` dictionary (plus sample images)."""
        c = self.config
        started = time.perf_counter()
        for spec in specs:  # build each method once up front: a bad name fails before any work
            self._anonymizer(spec)
        dataset = load_dataset(c.dataset, split=c.split, data_root=c.data_root, limit=c.limit)
        probes, dataset_info = self.prepare_probes(dataset)
        dataset_info.update({"name": dataset.name, "root": str(dataset.root), "layout": dataset.layout,
                             "split": c.split, "limit": c.limit})
        timings = {"detect_originals_s": time.perf_counter() - started}
        if not probes:
            raise FaceDeidError(f"no usable faces in {dataset.name} ({dataset_info['records']} "
                                f"images, {dataset_info['excluded_no_face']} without a detected face)")
        t0 = time.perf_counter()
        original_embeddings = [self.embed_originals(r, probes) for r in self.recognizers]
        gallery, gallery_info = self.linking_gallery(c.dataset, probes)
        timings["embed_originals_and_gallery_s"] = time.perf_counter() - t0
        services, service_errors = self._load_services()
        t0 = time.perf_counter()
        original_service_outputs = {}
        for name, service in list(services.items()):
            try:
                original_service_outputs[name] = service.predict(
                    [p.image for p in probes], [p.face.box for p in probes])
            except Exception as error:  # noqa: BLE001
                service_errors[name] = f"{type(error).__name__}: {error}"
                del services[name]
        timings["services_on_originals_s"] = time.perf_counter() - t0

        baseline = {"label": "original (no de-identification)", "privacy": {
            r.name: self.privacy_metrics(k, original_embeddings[k], original_embeddings[k], probes,
                                         gallery)
            for k, r in enumerate(self.recognizers)}}
        sample_count = min(c.samples, len(probes))
        samples = {"original": [p.image for p in probes[:sample_count]], "methods": {}}
        rows = []
        for spec in specs:
            t0 = time.perf_counter()
            outputs, ok, failures = self.anonymize_all(spec, probes)
            kept = [probes[i] for i in ok]
            row: dict[str, Any] = {"label": spec.title, "method": spec.method,
                                   "params": dict(spec.params), "faces": len(kept),
                                   "failures": len(failures), "failure_details": failures[:50]}
            samples["methods"][spec.title] = [outputs[ok.index(i)] if i in ok else None
                                              for i in range(sample_count)]
            row["privacy"] = {}
            row["embedding_frechet_distance"] = {}
            for k, recognizer in enumerate(self.recognizers):
                if not kept:
                    continue
                anonymized = recognizer.embed(outputs, [p.face.box for p in kept],
                                              reference_images=[p.image for p in kept])
                originals = original_embeddings[k][ok]
                row["privacy"][recognizer.name] = self.privacy_metrics(k, originals, anonymized,
                                                                       kept, gallery)
                row["embedding_frechet_distance"][recognizer.name] = \
                    quality.embedding_frechet_distance(originals, anonymized)
            row["services"] = {}
            for name, service in services.items():
                if not kept:
                    continue
                try:
                    produced = service.predict(outputs, [p.face.box for p in kept])
                    reference = _subset_output(original_service_outputs[name], ok, len(probes))
                    row["services"][name] = _jsonable(service.compare(reference, produced))
                except Exception as error:  # noqa: BLE001
                    row["services"][name] = {"error": f"{type(error).__name__}: {error}"}
            row["quality"] = self._quality(kept, outputs)
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
        timings["total_s"] = time.perf_counter() - started
        timings["faces_per_method"] = len(probes)
        return {"config": c.to_dict(), "dataset": dataset_info, "linking_gallery": gallery_info,
                "recognizers": [{"name": r.name, "metric": r.metric, "threshold": r.threshold}
                                for r in self.recognizers],
                "services_available": sorted(services), "service_errors": service_errors,
                "baseline": baseline, "methods": rows, "timings": timings,
                "cache": {"dir": c.cache_dir, "hits": self.cache.hits, "misses": self.cache.misses},
                "_samples": samples}

    def _quality(self, kept: list[Probe], outputs: list[np.ndarray]) -> dict:
        if not kept:
            return {}
        per_image = [quality.image_quality(p.image, out, p.face.box) for p, out in zip(kept, outputs)]
        summary = {}
        for key in per_image[0]:
            values = np.array([q[key] for q in per_image], dtype=np.float64)
            finite = values[np.isfinite(values)]
            summary[key] = float(finite.mean()) if finite.size else float("inf")
        if self.config.fid_weights:
            extractor = quality.TorchFeatureExtractor(self.config.fid_weights)
            summary["fid"] = extractor.fid([p.image for p in kept], outputs)
        if self.config.lpips_weights:
            lpips = quality.UserLPIPS(self.config.lpips_weights)
            summary["lpips"] = float(lpips.distance([p.image for p in kept], outputs).mean())
        return summary

    def _load_services(self) -> tuple[dict, dict]:
        services, errors = {}, {}
        if not self.config.services:
            return services, errors
        try:
            from .services import create_service
        except ImportError as error:
            return {}, {name: f"service evaluators unavailable: {error}" for name in self.config.services}
        for name in self.config.services:
            kwargs: dict[str, Any] = {}
            if name == "expression":
                kwargs["crop"] = self.config.service_crop
            elif name == "detection" and self.config.detector == "dlib-hog":
                kwargs["detector"] = "centerface"  # never judge outputs with their own detector
            try:
                services[name] = create_service(name, **kwargs)
            except Exception as error:  # noqa: BLE001 - a missing checkpoint is reported, not fatal
                errors[name] = f"{type(error).__name__}: {error}"
        return services, errors


def _subset_output(output, indices: list[int], total: int):
    """The service output restricted to ``indices`` (fields of length ``total`` are indexed)."""
    if len(indices) == total:
        return output
    if not dataclasses.is_dataclass(output):
        raise TypeError("cannot subset a service output that is not a dataclass")
    changes = {}
    for f in dataclasses.fields(output):
        value = getattr(output, f.name)
        if isinstance(value, np.ndarray) and len(value) == total:
            changes[f.name] = value[indices]
        elif isinstance(value, list) and len(value) == total:
            changes[f.name] = [value[i] for i in indices]
    return dataclasses.replace(output, **changes)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def evaluate(config: EvalConfig, specs: Sequence[MethodSpec | str]) -> dict:
    """Convenience wrapper: ``evaluate(EvalConfig(dataset=..., limit=50), ["mosaic", "blur"])``."""
    parsed = [s if isinstance(s, MethodSpec) else MethodSpec.parse(s) for s in specs]
    return Evaluator(config).run(parsed)
