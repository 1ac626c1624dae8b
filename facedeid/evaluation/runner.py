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
import hashlib
import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..detection import Face, FaceDetector
from ..detection.locate import FaceLocator, main_face
from ..errors import FaceDeidError, InvalidParameterError
from ..io.datasets import FaceDataset, FaceRecord, load_dataset
from ..io.images import write_bytes_atomic
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

#: ``restorer(spec, deidentified_images, faces) -> restored images | None`` (None: no attacker
#: trained for this method); ``faces`` are the originals' :class:`Face` objects (box and
#: landmarks located on the original), restored images keep their shapes.
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
    second_chance: bool = True  # FaceLocator: another detector, turns, 2x before "no face"
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


class MethodStage:
    """The method stage of an evaluation: every probe's *known* face de-identified through the
    same :class:`~facedeid.pipeline.Anonymizer` as ``facedeid anonymize``.

    It holds only the face locator (no attackers, services or caches), so it can run anywhere
    the data is: the :class:`Evaluator` owns one, and the Ray engine builds one per actor from
    the run's config.
    """

    def __init__(self, config: EvalConfig, locator: FaceLocator | None = None):
        self.config = config
        self.locator = locator or FaceLocator(config.detector, config.detector_params,
                                              landmarks=config.landmarks,
                                              second_chance=config.second_chance)

    def anonymizer(self, spec: MethodSpec, seed: int | None = None):
        from ..pipeline import Anonymizer
        c = self.config
        # allow_weak: measuring how weak a setting is is the evaluator's job, so it never refuses
        return Anonymizer(method=spec.method, method_params=dict(spec.params),
                          detector=self.locator, landmarks=c.landmarks, expand=c.expand,
                          feather=c.feather, mask_shape=c.mask_shape, no_face="keep",
                          seed=c.seed if seed is None else seed, allow_weak=True)

    def anonymize_all(self, spec: MethodSpec, probes: list[Probe], seed: int | None = None,
                      desc: str | None = None, anonymizer=None):
        """De-identify each probe's known face: ``(outputs, ok indices, failures)``."""
        anonymizer = anonymizer or self.anonymizer(spec, seed)
        outputs, ok, failures = [], [], []
        for i, probe in enumerate(_progress(probes, self.config.progress,
                                            desc=(desc or spec.title)[:24], unit="img")):
            face = Face(box=probe.face.box.copy(), score=probe.face.score,
                        landmarks=None if probe.face.landmarks is None else probe.face.landmarks.copy())
            image = probe.image if probe.image is not None else probe.record.load()
            try:
                result = anonymizer.anonymize(image, faces=[face])
                outputs.append(result.image)
                ok.append(i)
            except Exception as error:  # noqa: BLE001 - any method bug is one image's failure
                failures.append({"file": probe.record.name, "error": f"{type(error).__name__}: {error}"})
        return outputs, ok, failures


class Evaluator:
    """Holds the models of one run; :meth:`run` evaluates several method specs on one dataset.

    Args:
        config: the run's settings.
        restorer: optional restoration attacker (:data:`Restorer`); when it returns images for
            a method, "restored" privacy figures are reported for that method and every attacker.
    """

    def __init__(self, config: EvalConfig, restorer: Restorer | None = None):
        self.config = config
        self.restorer = restorer
        # One locator for the run: originals, gallery and every method's Anonymizer share it
        # (models load once; every stage sees the same faces).
        self.locator = FaceLocator(config.detector, config.detector_params,
                                   landmarks=config.landmarks, second_chance=config.second_chance)
        self.detector: FaceDetector = self.locator.detector
        self.method_stage = MethodStage(config, self.locator)
        self.recognizers: list[FaceRecognizer] = [
            r if isinstance(r, FaceRecognizer) else self._build_recognizer(r)
            for r in config.recognizers]
        if not self.recognizers:
            raise InvalidParameterError("at least one recognizer is needed for privacy metrics")
        self.cache = EmbeddingCache(config.cache_dir)
        self.service_cache = ServiceCache(None if config.cache_dir is None
                                          else Path(config.cache_dir) / "services")
        # Names how the face of an original was chosen, in the embedding cache's key: entries
        # made under another rule (the old "largest" pick) are never reused.
        self.locator_key = (f"{config.detector}|{sorted(config.detector_params.items())}"
                            "|locator+main_face"
                            + ("" if config.second_chance else "|no-second-chance"))
        self._gallery_embeddings: list[np.ndarray] = []
        self._output_memo: dict[tuple, np.ndarray] = {}

    def _per_recognizer(self, work: Callable[[int, FaceRecognizer], Any]) -> list:
        """``[work(k, recognizer) for each recognizer]``, the recognizers side by side in
        threads: faceres (ONNX Runtime) and the surrogate (PyTorch) release the GIL, and dlib
        hands its large batches to worker processes, so two attackers cost about one."""
        if len(self.recognizers) < 2:
            return [work(k, r) for k, r in enumerate(self.recognizers)]
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(len(self.recognizers), thread_name_prefix="recognizer") as pool:
            futures = [pool.submit(work, k, r) for k, r in enumerate(self.recognizers)]
            return [future.result() for future in futures]

    def _build_recognizer(self, name: str) -> FaceRecognizer:
        params = self.config.recognizer_params.get(name, {})
        if name == "faceres" and "age_gender" in self.config.services:
            # the age_gender service then reads the heads of the attacker's forward passes
            from .services.age_gender import faceres_with_heads
            return faceres_with_heads(**params)
        return create_recognizer(name, **params)

    # -- originals ----------------------------------------------------------------------------
    def _anonymizer(self, spec: MethodSpec, seed: int | None = None):
        return self.method_stage.anonymizer(spec, seed)

    def attacker_marks(self, method) -> dict[str, str]:
        """``{recognizer name: "independent" | "seen in training"}`` for a built method."""
        trained = {str(name) for name in getattr(method, "trained_with", ()) or ()}
        return {r.name: SEEN_IN_TRAINING if _family(r.name) in trained or r.name in trained
                else INDEPENDENT for r in self.recognizers}

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
        """Embeddings of the originals, from the cache where possible (misses in one batch)."""
        out: list[np.ndarray | None] = []
        missing = []
        for i, probe in enumerate(probes):
            hit = self.cache.get(probe.digest, recognizer.name, self.locator_key)
            if hit is not None and np.allclose(hit[1], probe.face.box, atol=0.5):
                out.append(hit[0])
            else:
                out.append(None)
                missing.append(i)
        for start in _progress(range(0, len(missing), 256), self.config.progress and len(missing) > 256,
                               desc=f"embed originals ({recognizer.name})", unit="batch"):
            chunk = missing[start:start + 256]
            embeddings = recognizer.embed([probes[i].image for i in chunk],
                                          [probes[i].face.box for i in chunk])
            for i, embedding in zip(chunk, embeddings):
                out[i] = embedding
                self.cache.put(probes[i].digest, recognizer.name, self.locator_key, embedding,
                               probes[i].face.box)
        return np.stack(out) if out else np.zeros((0, 0), np.float32)

    def linking_gallery(self, dataset_name: str, probes: list[Probe],
                        original_embeddings: list[np.ndarray] | None = None
                        ) -> tuple[list[Probe], dict]:
        """Other photos of the probes' identities: the linking gallery.

        Per person, at most ``gallery_per_identity`` photos in file order from the whole
        dataset (all splits): photos outside the probe set first, then other probes (matching
        skips a probe's own photo, see :func:`privacy.rank1_hits`). With the identity-disjoint
        split of celeba-id200 all photos of the 40 test people are test photos, so at full size
        the gallery is leave-one-out over the probes.
        """
        c = self.config
        real = {p.identity for p in probes if p.record.identity is not None}
        if not real:
            self._gallery_embeddings = []
            return [], {"size": 0, "note": "dataset has no identities"}
        if original_embeddings is None:
            original_embeddings = self._per_recognizer(lambda k, r: self.embed_originals(r, probes))
        full = load_dataset(dataset_name, split="all", data_root=c.data_root)
        probe_index = {p.record.path: i for i, p in enumerate(probes)}
        outside, inside = [], []
        for record in full.records:
            if record.identity in real:
                (inside if record.path in probe_index else outside).append(record)
        per_identity: dict[str, int] = {}
        chosen = []
        for record in outside + inside:
            if c.gallery_per_identity is not None and \
                    per_identity.get(record.identity, 0) >= c.gallery_per_identity:
                continue
            per_identity[record.identity] = per_identity.get(record.identity, 0) + 1
            chosen.append(record)
        chosen.sort(key=lambda r: str(r.path))
        entries: list[tuple[Probe, list[np.ndarray]]] = []
        need_detection, no_face = [], 0
        for record in chosen:
            if record.path in probe_index:  # a probe: its face and embeddings are known
                i = probe_index[record.path]
                entries.append((probes[i], [e[i] for e in original_embeddings]))
                continue
            digest = file_digest(record.path)  # cached entries also give the box: no decoding
            hits = [self.cache.get(digest, r.name, self.locator_key) for r in self.recognizers]
            if all(h is not None for h in hits):
                entries.append((Probe(record, None, Face(box=hits[0][1]), digest,  # type: ignore[arg-type]
                                      record.identity), [h[0] for h in hits]))
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
        embeddings_fresh = self._per_recognizer(lambda k, r: self.embed_originals(r, fresh)) \
            if fresh else []
        for i, probe in enumerate(fresh):
            entries.append((probe, [e[i] for e in embeddings_fresh]))
        entries.sort(key=lambda e: str(e[0].record.path))
        gallery = [entry for entry, _ in entries]
        self._gallery_embeddings = [np.stack([e[1][k] for e in entries]) if entries
                                    else np.zeros((0, 0), np.float32)
                                    for k in range(len(self.recognizers))]
        from_probes = sum(1 for g in gallery if g.record.path in probe_index)
        info = {"size": len(gallery), "identities": len({g.identity for g in gallery}),
                "from_probe_set": from_probes, "excluded_no_face": no_face,
                "per_identity_cap": c.gallery_per_identity,
                "source": "other photos of the probe identities in the whole dataset (outside the "
                          "probe set first); a probe is never matched with its own photo"}
        return gallery, info

    # -- one method --------------------------------------------------------------------------
    def anonymize_all(self, spec: MethodSpec, probes: list[Probe], seed: int | None = None,
                      desc: str | None = None, anonymizer=None):
        """De-identify each probe's known face: ``(outputs, ok indices, failures)``."""
        return self.method_stage.anonymize_all(spec, probes, seed, desc, anonymizer)

    def privacy_metrics(self, recognizer_index: int, originals: np.ndarray, anonymized: np.ndarray,
                        probes: list[Probe], gallery: list[Probe],
                        unprotected: np.ndarray | None = None) -> dict:
        """Privacy of one attacker over every probe.

        ``anonymized`` has one row per probe; rows flagged ``unprotected`` (the method failed
        there) hold the original's embedding and count as not de-identified and identified.
        """
        recognizer = self.recognizers[recognizer_index]
        metric = recognizer.metric
        ids = [p.identity for p in probes]
        keys = [p.digest for p in probes]
        distance = privacy.identity_distance(originals, anonymized, metric)
        if unprotected is not None:
            distance = np.where(unprotected, 0.0, distance)
        out: dict[str, Any] = {
            "metric": metric, "tau": recognizer.threshold, "n": int(len(distance)),
            "unprotected_failures": int(np.sum(unprotected)) if unprotected is not None else 0,
            "identity_distance_mean": float(distance.mean()) if distance.size else float("nan"),
            "identity_distance_median": float(np.median(distance)) if distance.size else float("nan"),
            "cosine_distance_mean": float(np.where(
                unprotected if unprotected is not None else False, 0.0,
                privacy.identity_distance(originals, anonymized, "cosine")).mean())
            if distance.size else float("nan"),
            "sdr": privacy.successful_deidentification_rate(distance, recognizer.threshold,
                                                            unprotected),
            "rank1_own_gallery": privacy.rank1_identification_rate(
                anonymized, ids, originals, ids, metric, unprotected=unprotected),
        }
        gallery_embeddings = self._gallery_embeddings[recognizer_index] if gallery else None
        if gallery_embeddings is not None and len(gallery_embeddings):
            gallery_ids = [g.identity for g in gallery]
            gallery_keys = [g.digest for g in gallery]
            hits = privacy.rank1_hits(anonymized, ids, gallery_embeddings, gallery_ids, metric,
                                      probe_keys=keys, gallery_keys=gallery_keys,
                                      unprotected=unprotected)
            out["rank1_linking"] = float(hits.mean()) if hits.size else float("nan")
            out["linking_probes"] = int(hits.size)
            genuine, impostor = privacy.genuine_impostor_distances(
                anonymized, ids, gallery_embeddings, gallery_ids, metric,
                probe_keys=keys, gallery_keys=gallery_keys)
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

    def _embed_outputs(self, recognizer: FaceRecognizer, outputs: list[np.ndarray],
                       sources: list[Probe], originals: np.ndarray | None,
                       ok: list[int], total: int) -> np.ndarray:
        """One row per probe: the output's embedding where the method produced one, else the
        original's (``originals`` given) — the failed face left as it was."""
        produced = self._embed_memo(recognizer, outputs, sources) if outputs else None
        if originals is None:
            return produced
        rows = np.array(originals, dtype=np.float32, copy=True)
        if produced is not None and len(produced):
            rows[ok] = produced
        return rows

    def _embed_memo(self, recognizer: FaceRecognizer, images: list[np.ndarray],
                    sources: list[Probe]) -> np.ndarray:
        """Embeddings of de-identified images, each computed once per method: keyed by the
        image's content, its box and its original (a deterministic method gives the parrot
        attacker the very images the probes are, which then cost nothing)."""
        keys = [(recognizer.name, source.digest, hashlib.blake2b(
            np.ascontiguousarray(image).tobytes() + np.asarray(source.face.box, np.float32).tobytes(),
            digest_size=16).digest()) for image, source in zip(images, sources)]
        missing = [i for i, key in enumerate(keys) if key not in self._output_memo]
        if missing:
            fresh = recognizer.embed([images[i] for i in missing],
                                     [sources[i].face.box for i in missing],
                                     reference_images=[sources[i].image for i in missing])
            for i, row in zip(missing, fresh):
                self._output_memo[keys[i]] = np.asarray(row, np.float32)
        dims = next(iter(self._output_memo.values())).shape if self._output_memo else (0,)
        return np.stack([self._output_memo[key] for key in keys]) if keys \
            else np.zeros((0, *dims), np.float32)

    def parrot_attack(self, spec: MethodSpec, probes: list[Probe], gallery: list[Probe],
                      anonymized: list[np.ndarray], unprotected: np.ndarray) -> tuple[dict, dict]:
        """Newton et al.'s parrot recognition: ``({recognizer: figures}, run info)``.

        The attacker de-identifies its own galleries with the same method and parameters and a
        fresh seed (:data:`PARROT_SEED_OFFSET`): the probe-set originals (own-gallery protocol)
        and the linking gallery. Gallery photos the method fails on are left out of the
        attacker's gallery (the attacker's loss); failed probes count as identified.
        """
        seed = self.config.seed + PARROT_SEED_OFFSET
        anonymizer = self._anonymizer(spec, seed)
        own_outputs, own_ok, own_failures = self.anonymize_all(
            spec, probes, desc=f"parrot {spec.title}", anonymizer=anonymizer)
        probe_index = {p.digest: i for i, p in enumerate(probes)}
        outside = [g for g in gallery if g.digest not in probe_index]
        out_outputs, out_ok, out_failures = self.anonymize_all(
            spec, outside, desc=f"parrot gallery {spec.title}", anonymizer=anonymizer) \
            if outside else ([], [], [])
        own_sources = [probes[i] for i in own_ok]
        # one image per linking-gallery entry, reusing the probe-set parrot outputs
        own_by_digest = {probes[i].digest: out for i, out in zip(own_ok, own_outputs)}
        out_by_digest = {outside[i].digest: out for i, out in zip(out_ok, out_outputs)}
        link_entries = [(g, own_by_digest.get(g.digest, out_by_digest.get(g.digest)))
                        for g in gallery]
        link_entries = [(g, image) for g, image in link_entries if image is not None]
        link_sources = [g if g.image is not None else dataclasses.replace(g, image=g.record.load())
                        for g, _ in link_entries]
        ids, keys = [p.identity for p in probes], [p.digest for p in probes]

        def attack(k: int, recognizer: FaceRecognizer) -> dict:
            probe_rows = anonymized[k]
            own_gallery = self._embed_outputs(recognizer, own_outputs, own_sources, None, own_ok,
                                              len(probes))
            entry: dict[str, Any] = {"rank1_own_gallery": float("nan"), "rank1_linking": None}
            if own_gallery is not None and len(own_gallery):
                entry["rank1_own_gallery"] = privacy.rank1_identification_rate(
                    probe_rows, ids, own_gallery, [ids[i] for i in own_ok], recognizer.metric,
                    unprotected=unprotected)
            if link_entries:
                # the linking-gallery rows that are probes reuse the rows just embedded
                own_rows = {probes[i].digest: row for i, row in zip(own_ok, own_gallery)} \
                    if own_gallery is not None else {}
                missing = [j for j, (g, _) in enumerate(link_entries) if g.digest not in own_rows]
                embedded = self._embed_memo(recognizer, [link_entries[j][1] for j in missing],
                                            [link_sources[j] for j in missing]) \
                    if missing else []
                fresh = dict(zip(missing, embedded))
                link_gallery = np.stack([fresh[j] if j in fresh else own_rows[g.digest]
                                         for j, (g, _) in enumerate(link_entries)])
                hits = privacy.rank1_hits(probe_rows, ids, link_gallery,
                                          [g.identity for g, _ in link_entries], recognizer.metric,
                                          probe_keys=keys,
                                          gallery_keys=[g.digest for g, _ in link_entries],
                                          unprotected=unprotected)
                entry["rank1_linking"] = float(hits.mean()) if hits.size else float("nan")
            return entry

        figures = dict(zip((r.name for r in self.recognizers), self._per_recognizer(attack)))
        info = {"seed": seed, "gallery_own": len(own_ok), "gallery_linking": len(link_entries),
                "gallery_failures": len(own_failures) + len(out_failures)}
        return figures, info

    def restored_attack(self, spec: MethodSpec, probes: list[Probe], gallery: list[Probe],
                        outputs: list[np.ndarray], ok: list[int], original_embeddings,
                        unprotected: np.ndarray) -> dict | None:
        """Privacy against the restorer's images, matched with the *original* galleries."""
        if self.restorer is None or not outputs:
            return None
        kept = [probes[i] for i in ok]
        restored = self.restorer(spec, list(outputs), [p.face for p in kept])
        if restored is None:
            return None
        if len(restored) != len(outputs) or any(np.shape(r) != np.shape(o)
                                                 for r, o in zip(restored, outputs)):
            raise FaceDeidError("the restorer must return one image of the same shape per output")
        figures = {}
        restored_rows = self._per_recognizer(lambda k, r: self._embed_outputs(
            r, list(restored), kept, original_embeddings[k], ok, len(probes)))
        for k, recognizer in enumerate(self.recognizers):
            full = self.privacy_metrics(k, original_embeddings[k], restored_rows[k], probes,
                                        gallery, unprotected)
            figures[recognizer.name] = {key: full[key] for key in
                                        ("sdr", "rank1_own_gallery", "rank1_linking",
                                         "identity_distance_mean")}
        return figures

    def run(self, specs: Sequence[MethodSpec]) -> dict:
        """Evaluate every spec; returns the ``results.json`` dictionary (plus sample images)."""
        c = self.config
        started = time.perf_counter()
        methods = {spec: self._anonymizer(spec).method for spec in specs}  # bad names fail now
        dataset = load_dataset(c.dataset, split=c.split, data_root=c.data_root, limit=c.limit,
                               split_source=c.split_source)
        probes, dataset_info = self.prepare_probes(dataset)
        split_file = None
        if dataset.layout == "celeba":
            from ..io.datasets import DISJOINT_SPLIT_FILE
            for candidate in ((DISJOINT_SPLIT_FILE, "identity_split.txt")
                              if c.split_source == "disjoint" else ("identity_split.txt",)):
                if c.split_source != "official" and (Path(dataset.root) / candidate).is_file():
                    split_file = candidate
                    break
            split_file = split_file or "list_eval_partition.txt"
        dataset_info.update({"name": dataset.name, "root": str(dataset.root), "layout": dataset.layout,
                             "split": c.split, "limit": c.limit, "split_file": split_file,
                             "identities": len({p.identity for p in probes})})
        timings: dict[str, Any] = {"detect_originals_s": time.perf_counter() - started}
        if not probes:
            raise FaceDeidError(f"no usable faces in {dataset.name} ({dataset_info['records']} "
                                f"images, {dataset_info['excluded_no_face']} without a detected face)")
        t0 = time.perf_counter()
        original_embeddings = self._per_recognizer(lambda k, r: self.embed_originals(r, probes))
        timings["embed_originals_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        gallery, gallery_info = self.linking_gallery(c.dataset, probes, original_embeddings)
        timings["linking_gallery_s"] = time.perf_counter() - t0
        services, service_errors = self._load_services()
        t0 = time.perf_counter()
        original_service_outputs = {}
        for name, service in list(services.items()):
            try:
                original_service_outputs[name] = self._cached_predict(name, service, probes)
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
            self._output_memo.clear()  # outputs of one method are never another's
            step: dict[str, float] = {}
            outputs, ok, failures = self.anonymize_all(spec, probes)
            step["anonymize_s"] = time.perf_counter() - t0
            kept = [probes[i] for i in ok]
            unprotected = np.ones(len(probes), dtype=bool)
            unprotected[ok] = False
            marks = self.attacker_marks(methods[spec])
            row: dict[str, Any] = {"label": spec.title, "method": spec.method,
                                   "params": dict(spec.params), "faces": len(probes),
                                   "outputs": len(kept), "failures": len(failures),
                                   "failure_details": failures[:50],
                                   "trained_with": list(getattr(methods[spec], "trained_with", ())),
                                   "attackers": marks}
            samples["methods"][spec.title] = [outputs[ok.index(i)] if i in ok else None
                                              for i in range(sample_count)]
            row["privacy"] = {}
            row["embedding_frechet_distance"] = {}
            t1 = time.perf_counter()
            anonymized_rows = self._per_recognizer(lambda k, r: self._embed_outputs(
                r, outputs, kept, original_embeddings[k], ok, len(probes)))
            for k, recognizer in enumerate(self.recognizers):
                rows_k = anonymized_rows[k]
                row["privacy"][recognizer.name] = dict(
                    self.privacy_metrics(k, original_embeddings[k], rows_k, probes, gallery,
                                         unprotected), attacker=marks[recognizer.name])
                row["embedding_frechet_distance"][recognizer.name] = \
                    quality.embedding_frechet_distance(original_embeddings[k][ok], rows_k[ok]) \
                    if len(ok) > 1 else None
            step["privacy_s"] = time.perf_counter() - t1
            if c.parrot:
                t1 = time.perf_counter()
                parrot, row["parrot"] = self.parrot_attack(spec, probes, gallery, anonymized_rows,
                                                           unprotected)
                for name, figures in parrot.items():
                    row["privacy"][name]["parrot"] = figures
                step["parrot_s"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            restored = self.restored_attack(spec, probes, gallery, outputs, ok, original_embeddings,
                                            unprotected)
            if restored is not None:
                for name, figures in restored.items():
                    row["privacy"][name]["restored"] = figures
                step["restored_s"] = time.perf_counter() - t1
            t1 = time.perf_counter()
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
            step["services_s"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            row["quality"] = self._quality(kept, outputs)
            step["quality_s"] = time.perf_counter() - t1
            row["seconds"] = time.perf_counter() - t0
            row["timings"] = step
            rows.append(row)
        timings["total_s"] = time.perf_counter() - started
        timings["faces_per_method"] = len(probes)
        return {"config": c.to_dict(), "dataset": dataset_info, "linking_gallery": gallery_info,
                "recognizers": [{"name": r.name, "metric": r.metric, "threshold": r.threshold}
                                for r in self.recognizers],
                "services_available": sorted(services), "service_errors": service_errors,
                "baseline": baseline, "methods": rows, "timings": timings,
                "cache": {"dir": c.cache_dir, "hits": self.cache.hits, "misses": self.cache.misses,
                          "service_hits": self.service_cache.hits,
                          "service_misses": self.service_cache.misses},
                "restorer": None if self.restorer is None
                else getattr(self.restorer, "__name__", type(self.restorer).__name__),
                "_samples": samples}

    def _cached_predict(self, name: str, service, probes: list[Probe]):
        """The service's answers on the originals, from the service cache where possible."""
        key = self._service_key(name)
        found = [self.service_cache.get(p.digest, key, p.face.box) for p in probes]
        missing = [i for i, hit in enumerate(found) if hit is None]
        if missing:
            fresh = service.predict([probes[i].image for i in missing],
                                    [probes[i].face.box for i in missing])
            for position, i in enumerate(missing):
                found[i] = _output_row(fresh, position, len(missing))
                self.service_cache.put(probes[i].digest, key, probes[i].face.box, found[i])
            template = fresh
        else:
            template = None
        return _stack_output_rows(found, template, type(template) if template is not None
                                  else self._service_output_type(service))

    def _service_output_type(self, service):
        from .services.base import ServiceOutput
        if getattr(service, "name", "") == "age_gender":
            from .services.age_gender import AgeGenderOutput
            return AgeGenderOutput
        return ServiceOutput

    def _service_key(self, name: str) -> str:
        """Names everything an original's service answer depends on: the service and its
        settings, the face rule, and the shipped checkpoints (any retraining invalidates)."""
        checkpoints = Path(__file__).resolve().parents[1] / "checkpoints"
        stamp = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime))
                       for p in checkpoints.glob("*.pt")) if checkpoints.is_dir() else []
        settings = (name, self.config.service_crop, self.config.detector, self.locator_key, stamp)
        return hashlib.sha256(repr(settings).encode()).hexdigest()[:16]

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
            elif name == "age_gender":
                shared = [r for r in self.recognizers if type(r).__name__ == "FaceresWithHeads"]
                if shared:  # one faceres network for the attacker and the service
                    kwargs["recognizer"] = shared[0]
            try:
                services[name] = create_service(name, **kwargs)
            except Exception as error:  # noqa: BLE001 - a missing checkpoint is reported, not fatal
                errors[name] = f"{type(error).__name__}: {error}"
        return services, errors


def _family(recognizer_name: str) -> str:
    """The registry name a recognizer variant belongs to ("dlib-jitter1" -> "dlib")."""
    return recognizer_name.split("-", 1)[0]


class ServiceCache:
    """Service answers on *original* images, one ``.npz`` per (file content, service key).

    The stored box must match the face used now, so a change of detector never reuses an
    answer computed elsewhere. ``directory=None`` disables caching.
    """

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = None if directory is None else Path(directory)
        self.hits = self.misses = 0

    def _path(self, digest: str, key: str) -> Path:
        return self.directory / key / digest[:2] / f"{digest}.npz"

    def get(self, digest: str, key: str, box: np.ndarray) -> dict | None:
        if self.directory is None:
            return None
        try:
            with np.load(self._path(digest, key), allow_pickle=False) as data:
                if not np.allclose(data["__box"], box, atol=0.5):
                    raise ValueError("box differs")
                row = {name[2:]: data[name] for name in data.files if name.startswith("f_")}
                row.update({name[2:]: None for name in data.files if name.startswith("n_")})
            self.hits += 1
            return row
        except (OSError, KeyError, ValueError):
            self.misses += 1
            return None

    def put(self, digest: str, key: str, box: np.ndarray, row: dict) -> None:
        if self.directory is None:
            return
        path = self._path(digest, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"__box": np.asarray(box, np.float32)}
        for name, value in row.items():
            if value is None:
                arrays[f"n_{name}"] = np.zeros(0)
            else:
                arrays[f"f_{name}"] = np.asarray(value)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_bytes_atomic(path, buffer.getbuffer())


def _output_row(output, index: int, total: int) -> dict:
    """Row ``index`` of a service output: each per-image field's value (others as they are)."""
    row = {}
    for f in dataclasses.fields(output):
        value = getattr(output, f.name)
        if isinstance(value, np.ndarray) and len(value) == total:
            row[f.name] = value[index]
        elif value is None:
            row[f.name] = None
        else:
            raise TypeError(f"service output field {f.name!r} is not per-image")
    return row


def _stack_output_rows(rows: list[dict], template, output_type):
    """Rebuild one service output from per-image rows (inverse of :func:`_output_row`)."""
    values = {}
    for f in dataclasses.fields(output_type):
        column = [row.get(f.name) for row in rows]
        if any(value is None for value in column):
            values[f.name] = None
        else:
            values[f.name] = np.stack([np.asarray(v) for v in column]) if column \
                else getattr(template, f.name, None)
    return output_type(**values)


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


def evaluate(config: EvalConfig, specs: Sequence[MethodSpec | str],
             restorer: Restorer | None = None) -> dict:
    """Convenience wrapper: ``evaluate(EvalConfig(dataset=..., limit=50), ["mosaic", "blur"])``."""
    parsed = [s if isinstance(s, MethodSpec) else MethodSpec.parse(s) for s in specs]
    return Evaluator(config, restorer).run(parsed)
