"""Model-input preprocessing for Qwen2.5-Omni / Qwen3-Omni without torchvision.

Video (:mod:`.vision`): ``smart_resize`` -> PIL resize -> rescale/normalise -> patchify in the ViT's
merge order, bit-identical to transformers' image processor. Audio (:mod:`.audio_features`): 16 kHz
mono -> 128-bin Whisper log-mel as the checkpoints' processors compute it, plus a per-window variant
for streaming. Pure functions of arrays: no file I/O, nothing happens on import.
"""

from omnizip.preprocess.audio_features import (
    AudioPreprocessConfig,
    EndPadding,
    MelWindow,
    audio_encoder_positions,
    audio_token_count,
    log_mel,
    log_mel_window,
    whisper_feature_extractor,
)
from omnizip.preprocess.vision import (
    FAMILIES,
    Family,
    PreparedVideo,
    VisionPreprocessConfig,
    patchify_video,
    preprocess_video,
    resize_frames,
    smart_resize,
)

__all__ = [
    "FAMILIES",
    "AudioPreprocessConfig",
    "EndPadding",
    "Family",
    "MelWindow",
    "VisionPreprocessConfig",
    "audio_encoder_positions",
    "audio_token_count",
    "log_mel",
    "log_mel_window",
    "PreparedVideo",
    "patchify_video",
    "preprocess_video",
    "resize_frames",
    "smart_resize",
    "whisper_feature_extractor",
]
