"""Methods that edit the identity representation of the disentangled generator (book ch. 5-6).

Both methods cut the aligned face, read its identity code ``r_id`` (faceres descriptor in the
whitened principal axes of training faces) and attribute maps ``r_att`` with
:mod:`facedeid.models.identity_generator`, change only ``r_id``, and redraw the face with the
fusion generator (Stage III: ``X̂ = h(r̃_id, r_att)``). The drawn face is colour-matched to the
input inside the paste-back ellipse, as Private-Encoder does.

* ``identity_dp`` — ε-IdentityDP (ch. 5, Eq. 5.11): ``r̃_id = clip(r_id) + Lap(Δf/ε)`` per
  coordinate. ``clip`` keeps ``r_id`` inside the per-axis range of the training faces, so
  ``Δf = Σ (upper − lower)`` bounds the L1 distance between *any* two inputs' codes (the book
  computes Δf as the largest distance over a data set, Eq. 5.12; that value is reported too,
  ``facedeid methods`` and the sidecar give both). Pulling the noisy code back inside the
  training faces' range is post-processing, which keeps ε-DP (Property 5.2). Fresh noise every
  call; ``seed`` makes it reproducible; in a video every track keeps one draw (the pipeline
  seeds each track's random generator once per video).
* ``password`` — personalized, invertible de-identification (ch. 6, Eq. 6.9/6.16): the code is
  rotated by ``θ = g(d)`` towards a password-derived direction orthogonal to it,
  ``r_new = r cos θ + J_p r sin θ``, where ``J_p = U J₀ Uᵀ`` is a complex structure (a rotation
  by 90° in k/2 planes) whose planes ``U`` come from the password through scrypt with a fresh
  salt. ``J_p r`` is orthogonal to ``r`` and as long, so the rotated code keeps the length of a
  real face's code and the angle to the original is exactly θ; the inverse
  ``r = r_new cos θ − J_p r_new sin θ`` is exact (the book's Gram–Schmidt direction needs the
  unknown angle between ``r`` and the reference and has two solutions). A wrong password
  rotates by another ``J`` and gives another code of the same length: another plausible face,
  never an error. The sidecar holds the salt, the scrypt parameters, the level and the rotated
  code ``r_new`` (the identity the output shows; it lets ``facedeid restore`` skip re-reading
  it from pixels) — nothing derived from the password itself.

faceres is the identity encoder, so faceres privacy figures of both methods are "seen in
training"; dlib and the surrogate are the independent attackers (docs/benchmarks.md).
Faces the 64-px model was not made for (tiny, unaligned, profile) get the pipeline's fallback
(pixelate), noted in the face's sidecar entry, exactly as ``private_encoder`` does.
"""
from __future__ import annotations

import base64
import getpass
import hashlib
import os
import secrets
import sys
from pathlib import Path

import numpy as np

from ..alignment import FaceAligner, FaceCrop, paste_back
from ..errors import InvalidParameterError
from .base import FALLBACK_METHOD, DeidMethod, FaceContext, Param, load_weights_once
from .private_encoder import match_colours, route_faces
from .registry import create_method, register

CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "identity_generator.pt"
PASSWORD_ENV = "FACEDEID_PASSWORD"
#: scrypt cost: 2^14 x 8 x 128 bytes = 16 MiB and ~50 ms per derivation on these cores, so a
#: guessed password costs an attacker the same, per file (fresh salt each time)
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
SALT_BYTES = 16
#: privacy level d -> rotation angle in degrees (book §6.4.1: g(d) = 70 + 5d below 4, then
#: 70 + 5(d + 1): 90° is skipped in the book because its inverse divides by cos θ; the exact
#: inverse used here has no such pole, the table is kept so levels mean what they mean there)
LEVEL_DEGREES = {d: 70 + 5 * d if d < 4 else 70 + 5 * (d + 1) for d in range(10)}
LEVEL_NAMES = {"low": 2, "mid": 5, "high": 8}


def level_angle(level: str) -> float:
    """``"mid"`` / ``"5"`` -> the rotation angle in radians."""
    d = LEVEL_NAMES.get(level, None)
    if d is None:
        d = int(level)
    return float(np.deg2rad(LEVEL_DEGREES[d]))


# -- the identity-code operations (pure functions of arrays; tested on their own) -------------
def laplace_identity(codes: np.ndarray, space, eps: float, rngs) -> np.ndarray:
    """Eq. 5.11 on each row of ``codes``: clip into the training range, add ``Lap(Δf/ε)`` per
    coordinate (one generator per row), pull the result back inside the training faces."""
    import torch

    clipped = space.clip(torch.from_numpy(codes)).numpy()
    scale = space.sensitivity_bound / eps
    noisy = np.stack([row + rng.laplace(0.0, scale, size=row.shape)
                      for row, rng in zip(clipped, rngs)]).astype(np.float32)
    return space.pull_inside(torch.from_numpy(noisy)).numpy()


def derive_key(password: bytes, salt: bytes, kdf: dict | None = None) -> bytes:
    """scrypt(password, salt): 32 bytes that seed the rotation planes."""
    kdf = dict(SCRYPT if kdf is None else kdf)
    return hashlib.scrypt(password, salt=salt, n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"]),
                          maxmem=256 * 1024 * 1024, dklen=32)


def complex_structure(key: bytes, rank: int) -> np.ndarray:
    """``J = U J₀ Uᵀ`` (``J² = −I``, ``Jᵀ = −J``) with ``U`` a Haar-random rotation seeded by
    ``key``: it turns every vector by 90° within password-chosen planes."""
    if rank % 2:
        raise ValueError("the identity code needs an even length for a complex structure")
    rng = np.random.default_rng(int.from_bytes(key, "big"))
    q, r = np.linalg.qr(rng.standard_normal((rank, rank)))
    q = q * np.sign(np.diag(r))
    j0 = np.zeros((rank, rank))
    half = np.arange(0, rank, 2)
    j0[half + 1, half], j0[half, half + 1] = 1.0, -1.0
    return q @ j0 @ q.T


def rotate_identity(codes: np.ndarray, structure: np.ndarray, angle: float) -> np.ndarray:
    """Eq. 6.16 with ``z_90 = J r``: ``r cos θ + J r sin θ`` (row-wise); ``-angle`` inverts."""
    codes = np.asarray(codes, np.float64)
    return (codes * np.cos(angle) + codes @ structure.T * np.sin(angle)).astype(np.float32)


def encode_code(code: np.ndarray) -> str:
    return base64.b64encode(np.asarray(code, "<f4").tobytes()).decode("ascii")


def decode_code(text: str, rank: int) -> np.ndarray:
    code = np.frombuffer(base64.b64decode(text), "<f4")
    if code.shape != (rank,):
        raise InvalidParameterError(f"identity code of length {code.size}, the model needs {rank}")
    return code.copy()


def read_password(file: str = "", env: str = PASSWORD_ENV, *, confirm: bool = False) -> bytes:
    """The password from a file (first line), else the environment variable ``env``, else a
    prompt on the terminal (twice with ``confirm``). Never from the command line: a process's
    arguments are visible to every user of the machine and land in shell histories."""
    if file:
        path = Path(file)
        if not path.is_file():
            raise InvalidParameterError(f"password file {file} does not exist")
        text = path.read_text(encoding="utf-8").splitlines()
        password = text[0] if text else ""
    elif env and os.environ.get(env):
        password = os.environ[env]
    elif sys.stdin is not None and sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if confirm and getpass.getpass("password again: ") != password:
            raise InvalidParameterError("the two passwords differ")
    else:
        raise InvalidParameterError(
            f"the password method needs a password: put it in a file (--param password_file=F, "
            f"or --password-file F for restore), in the environment variable {env or PASSWORD_ENV},"
            f" or run on a terminal to be asked; never on the command line")
    if not password:
        raise InvalidParameterError("the password is empty")
    return password.encode("utf-8")


def _load_identity_encoder(_path: Path):
    from ..models.identity_generator import IdentityEncoder
    return IdentityEncoder()


class IdentityRedrawer:
    """Stage I and III without any policy: identity codes of aligned crops, and faces redrawn
    from codes plus the crops' own attributes. Shared by both methods and by restoration."""

    def __init__(self, checkpoint: str | Path = "", batch_size: int = 32):
        from ..models.identity_generator import load_identity_generator
        path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
        self.model, self.payload = load_weights_once(path, load_identity_generator)
        self.identity_encoder = load_weights_once(Path("faceres"), _load_identity_encoder)
        self.size = int(self.model.config.image_size)
        self.batch_size = batch_size

    def _batches(self, function, *arrays: np.ndarray):
        """``torch.cat`` of ``function`` over ``batch_size``-row slices of ``arrays``, without
        gradients (each call gets the numpy slices)."""
        import torch

        size = self.batch_size
        with torch.no_grad():
            return torch.cat([function(*(a[i:i + size] for a in arrays))
                              for i in range(0, len(arrays[0]), size)])

    def identity_codes(self, pixels: np.ndarray) -> np.ndarray:
        """``(N, S, S, 3) uint8`` aligned crops -> ``(N, rank)`` identity codes."""
        from ..models.tensors import crops_to_tensor
        return self._batches(lambda p: self.model.space.encode(
            self.identity_encoder(crops_to_tensor(p))), pixels).numpy()

    def draw(self, codes: np.ndarray, crops: list[FaceCrop]) -> list[np.ndarray]:
        """Stage III: each crop's attributes drawn with its code, colour-matched to the crop
        inside its paste-back mask."""
        import torch

        from ..models.tensors import crops_to_tensor, tensor_to_crops
        pixels = np.stack([crop.pixels for crop in crops])
        drawn = tensor_to_crops(self._batches(
            lambda c, p: self.model(torch.from_numpy(c), crops_to_tensor(p)),
            np.asarray(codes, np.float32), pixels))
        return [match_colours(face, crop.pixels, crop.mask) for face, crop in zip(drawn, crops)]

    def transfer(self, pixels: np.ndarray, from_codes: np.ndarray, to_codes: np.ndarray,
                 refinements: int = 0) -> np.ndarray:
        """Keep the crops' own detail and move only what the identity changes:
        ``X + h(to, r_att) − h(from, r_att)``, uint8.

        With ``refinements`` > 0 the attributes are read again from the result and the
        difference recomputed (restoration: the de-identified face's attributes are close to,
        not equal to, the original's, and the fixed point ``X = Y − h(new, r_att(X)) +
        h(old, r_att(X))`` is approached in a few steps).
        """
        import torch

        from ..models.tensors import crops_to_tensor, tensor_to_crops

        def step(base, attribute_source, old, new):
            attributes = self.model.attributes(crops_to_tensor(attribute_source))
            return (crops_to_tensor(base) + self.model.fusion(torch.from_numpy(new), attributes)
                    - self.model.fusion(torch.from_numpy(old), attributes)).clamp(0, 1)

        source = np.asarray(pixels)
        from_codes = np.asarray(from_codes, np.float32)
        to_codes = np.asarray(to_codes, np.float32)
        result = source
        for _ in range(refinements + 1):
            result = tensor_to_crops(self._batches(step, source, result, from_codes, to_codes))
        return result


class IdentityEditMethod(DeidMethod):
    """Shared apply: read codes, let the subclass edit them, redraw the faces."""

    space = "aligned"
    aligned_size = 64
    # The redrawn face is the protection, and pixelating the box around it would leave nothing
    # for the password method to restore; the aligned crop spans the whole face.
    cover_whole_box = False
    trained_with = ("faceres",)

    def validate(self) -> None:
        self.redrawer = IdentityRedrawer(self.config["checkpoint"], self.config["batch_size"])
        self.model = self.redrawer.model
        self.aligned_size = self.redrawer.size
        self.trained_with = tuple(self.redrawer.payload.get("trained_with") or ("faceres",))
        self.template = FaceAligner(self.aligned_size).template
        self.fallback = create_method(FALLBACK_METHOD[0], **FALLBACK_METHOD[1])

    def edit_codes(self, codes: np.ndarray, contexts: list[FaceContext]) -> np.ndarray:
        raise NotImplementedError

    def render(self, codes: np.ndarray, edited: np.ndarray, crops: list[FaceCrop]
               ) -> list[np.ndarray]:
        """Stage III: the faces redrawn with their edited codes."""
        return self.redrawer.draw(edited, crops)

    def apply(self, crop: FaceCrop, context: FaceContext) -> np.ndarray:
        return self.apply_batch([crop], [context])[0]

    def apply_batch(self, crops: list[FaceCrop], contexts: list[FaceContext]) -> list[np.ndarray]:
        outputs, drawable = route_faces(self, crops, contexts)
        if drawable:
            chosen = [crops[i] for i in drawable]
            codes = self.redrawer.identity_codes(np.stack([crop.pixels for crop in chosen]))
            edited = self.edit_codes(codes, [contexts[i] for i in drawable])
            for index, face in zip(drawable, self.render(codes, edited, chosen)):
                outputs[index] = face
        return outputs


@register
class IdentityDPMethod(IdentityEditMethod):
    """ε-IdentityDP: Laplace noise on the identity code, then a redrawn face."""

    name = "identity_dp"
    summary = ("IdentityDP: Laplace noise calibrated to a privacy budget eps on the face's "
               "identity code, redrawn with its pose and expression (book ch. 5)")
    reference = "book ch. 5, Eq. 5.11-5.13 (epsilon-IdentityDP, Laplace mechanism)"
    params = (
        Param("eps", float, 6.0, "privacy budget epsilon of the identity code (smaller = more "
              "private; the book recommends 0.5-7; above 100 dlib recognises more than 10 % of "
              "the faces, docs/benchmarks.md)", minimum=1e-6, maximum=1e12, safe_max=100),
        Param("seed", int, -1, "seed of the noise (-1: fresh noise every call; a video track "
              "keeps one draw either way)", minimum=-1),
        Param("checkpoint", str, "", "identity-generator checkpoint (.pt); empty = the shipped "
              "identity_generator.pt"),
        Param("batch_size", int, 32, "faces per network call", minimum=1, maximum=4096),
    )

    def edit_codes(self, codes: np.ndarray, contexts: list[FaceContext]) -> np.ndarray:
        seed = self.config["seed"]
        rngs = [np.random.default_rng([seed, context.track_id if context.track_id is not None
                                       else index]) if seed >= 0 else context.rng
                for index, context in enumerate(contexts)]
        space = self.model.space
        for context in contexts:
            context.notes.update(eps=self.config["eps"],
                                 sensitivity_l1=round(space.sensitivity_bound, 3),
                                 noise_scale=round(space.sensitivity_bound / self.config["eps"], 4))
        return laplace_identity(codes, space, self.config["eps"], rngs)


@register
class PasswordMethod(IdentityEditMethod):
    """Password-keyed rotation of the identity code; ``facedeid restore`` undoes it."""

    name = "password"
    summary = ("password-invertible: the face becomes another person chosen by a password; "
               "`facedeid restore` with the same password gives the original back (book ch. 6)")
    reference = "book ch. 6, Eq. 6.9, 6.16-6.21 (exact inverse, see the module docstring)"
    params = (
        Param("level", str, "mid", "privacy level d: how far the identity turns (low = 80°, "
              "mid = 100°, high = 115°; or 0-9 as in the book, 70°-120°)",
              choices=("low", "mid", "high") + tuple(str(d) for d in range(10))),
        Param("detail", str, "redraw", "redraw: the whole face drawn by the generator (the "
              "book's Stage III); keep: only the identity's change is added to the face, so "
              "the photo's own detail stays and restore is near exact, at a measured cost in "
              "privacy (docs/benchmarks.md)", choices=("redraw", "keep")),
        Param("password_file", str, "", "file whose first line is the password (default: the "
              f"environment variable password_env, else a prompt)"),
        Param("password_env", str, PASSWORD_ENV, "environment variable holding the password"),
        Param("checkpoint", str, "", "identity-generator checkpoint (.pt); empty = the shipped "
              "identity_generator.pt"),
        Param("batch_size", int, 32, "faces per network call", minimum=1, maximum=4096),
    )

    def __init__(self, *, allow_weak: bool = False, **params) -> None:
        if "password" in params:
            raise InvalidParameterError(
                "never pass the password as a parameter: the command line is visible to every "
                f"user of the machine. Use --param password_file=F, the variable {PASSWORD_ENV} "
                "or the prompt")
        super().__init__(allow_weak=allow_weak, **params)

    def validate(self) -> None:
        super().validate()
        if self.config["detail"] == "keep":
            self.flag_weak("detail=keep adds only the identity's change to the photo's own face: "
                           "dlib and the surrogate still recognise most outputs "
                           "(docs/benchmarks.md)", key="detail")
        self._password = read_password(self.config["password_file"], self.config["password_env"],
                                       confirm=True)
        self._keys = PasswordKeys(self.model.space.rank)

    def edit_codes(self, codes: np.ndarray, contexts: list[FaceContext]) -> np.ndarray:
        angle = level_angle(self.config["level"])
        # One fresh salt per call (an image); a video track draws it from its per-video seeded
        # generator so all its frames turn the same way (one identity per track).
        call_salt = secrets.token_bytes(SALT_BYTES)
        edited = []
        for code, context in zip(codes, contexts):
            salt = context.rng.bytes(SALT_BYTES) if context.track_id is not None else call_salt
            new = rotate_identity(code[None], self._keys.structure(self._password, salt), angle)[0]
            context.notes.update(salt=salt.hex(), kdf={"name": "scrypt", **SCRYPT},
                                 level=self.config["level"], detail=self.config["detail"],
                                 identity_code=encode_code(new))
            edited.append(new)
        return np.stack(edited)

    def render(self, codes: np.ndarray, edited: np.ndarray, crops: list[FaceCrop]
               ) -> list[np.ndarray]:
        if self.config["detail"] == "keep":
            return list(self.redrawer.transfer(np.stack([c.pixels for c in crops]), codes, edited))
        return self.redrawer.draw(edited, crops)


class PasswordKeys:
    """Rotation structures per (password, salt), derived once: a video track or an image with
    several faces pays scrypt once, not per face or frame."""

    def __init__(self, rank: int):
        self.rank = rank
        self._last: tuple[tuple, np.ndarray] | None = None

    def structure(self, password: bytes, salt: bytes, kdf: dict | None = None) -> np.ndarray:
        inputs = (password, salt, repr(sorted((kdf or SCRYPT).items())))
        if self._last is None or self._last[0] != inputs:
            self._last = (inputs, complex_structure(derive_key(password, salt, kdf), self.rank))
        return self._last[1]


def restore_image(image: np.ndarray, sidecar: dict, password: bytes,
                  checkpoint: str | Path = "") -> tuple[np.ndarray, int, list[str]]:
    """``F⁻¹`` (Eq. 6.19-6.21): redraw every face the sidecar lists with its code turned back.

    Args:
        image: the de-identified image (RGB uint8).
        sidecar: the ``.json`` written beside it by ``facedeid anonymize --method password``.
        password: a wrong one gives other faces, never an error.
        checkpoint: the identity generator (default: the one the sidecar names, else shipped).

    Returns:
        the restored image (a new array), the number of faces redrawn, and one line per face
        that could not be restored.
    """
    from ..detection import Face

    if sidecar.get("method") != PasswordMethod.name:
        raise InvalidParameterError(f"the sidecar says method {sidecar.get('method')!r}; only "
                                    "outputs of --method password can be restored")
    pages = {face.get("page", 0) for face in sidecar.get("faces", [])}
    if len(pages) > 1:
        raise InvalidParameterError("restoring multi-page images is not supported")
    redrawer = IdentityRedrawer(checkpoint or (sidecar.get("params") or {}).get("checkpoint", ""))
    keys = PasswordKeys(redrawer.model.space.rank)
    aligner = FaceAligner(redrawer.size)
    output, problems, crops, codes, shown, kept = image.copy(), [], [], [], [], []
    for number, entry in enumerate(sidecar.get("faces", []), start=1):
        notes = entry.get("method_notes") or {}
        if "fallback" in notes:
            problems.append(f"face {number} was covered by {notes['fallback']} "
                            f"({notes.get('reason', '')}); its pixels cannot be restored")
            continue
        face = Face.from_dict(entry)
        if "salt" not in notes or not face.has_full_landmarks:
            problems.append(f"face {number} has no password notes or landmarks in the sidecar")
            continue
        crop = aligner.align(image, face)
        new = decode_code(notes["identity_code"], keys.rank) if "identity_code" in notes \
            else redrawer.identity_codes(crop.pixels[None])[0]
        structure = keys.structure(password, bytes.fromhex(notes["salt"]), notes.get("kdf"))
        codes.append(rotate_identity(new[None], structure, -level_angle(str(notes["level"])))[0])
        crops.append(crop)
        shown.append(new)
        kept.append(notes.get("detail") == "keep")
    restored: list[np.ndarray | None] = [None] * len(crops)
    for keep, chosen in ((False, [i for i, k in enumerate(kept) if not k]),
                         (True, [i for i, k in enumerate(kept) if k])):
        if not chosen:
            continue
        picked = [crops[i] for i in chosen]
        if keep:  # undo the added change; the photo's own detail was never replaced
            faces = redrawer.transfer(np.stack([crop.pixels for crop in picked]),
                                      np.stack([shown[i] for i in chosen]),
                                      np.stack([codes[i] for i in chosen]), refinements=2)
        else:
            faces = redrawer.draw(np.stack([codes[i] for i in chosen]), picked)
        for index, face in zip(chosen, faces):
            restored[index] = face
    for crop, pixels in zip(crops, restored):
        paste_back(output, crop, pixels)
    return output, len(crops), problems
