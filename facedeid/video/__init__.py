"""Video de-identification: streaming PyAV I/O with audio copied, a fail-closed face tracker,
and the frame loop that ties them to an :class:`~facedeid.pipeline.Anonymizer`."""
from .io import VideoInfo, VideoSink, VideoSource, is_live_source
from .pipeline import VideoOptions, VideoReport, anonymize_video, anonymize_video_job
from .tracking import FaceTracker

__all__ = ["anonymize_video", "anonymize_video_job", "VideoOptions", "VideoReport",
           "VideoSource", "VideoSink", "VideoInfo", "FaceTracker", "is_live_source"]
