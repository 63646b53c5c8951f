"""The spec reference: every field with its type, default and meaning, read off the spec model.

Field names, types and defaults come from the pydantic models and the model
registry, so the table cannot drift from the code. Only the meanings are written
here, in English and Vietnamese. The READMEs embed the output between markers,
and a test checks that they match.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipeline import models
from pipeline.params import Choice, Fixed, Param
from pipeline.spec import METRICS, OPTIMIZERS, SCHEDULES, StudySpec

START_MARKER = "<!-- spec-reference:start -->"
END_MARKER = "<!-- spec-reference:end -->"

# Meaning of each field, by dotted path: (English, Vietnamese).
DOCS: dict[str, tuple[str, str]] = {
    "name": ("study name: the Optuna study and the MLflow experiment",
             "tên study: tên của Optuna study và MLflow experiment"),
    "seed": ("seed of the sampler (plus the number of earlier trials) and of training (plus the trial number)",
             "seed của sampler (cộng số trial đã có) và của việc train (cộng số thứ tự trial)"),
    "language": ("language of the summary, diagnosis and report", "ngôn ngữ của bản tóm tắt, chẩn đoán và báo cáo"),
    "device": ("`auto` takes CUDA when present", "`auto` dùng CUDA khi có"),
    "compute.amp": ("bf16 autocast on CUDA (float16 with loss scaling where bf16 is missing); no effect on CPU",
                    "autocast bf16 trên CUDA (float16 kèm loss scaling nếu GPU không có bf16); không ảnh hưởng trên CPU"),
    "compute.channels_last": ("channels-last memory format on CUDA; no effect on CPU",
                              "định dạng bộ nhớ channels-last trên CUDA; không ảnh hưởng trên CPU"),
    "compute.compile": ("train through `torch.compile`; compiling adds seconds to each trial, so it pays off on long trials",
                        "train qua `torch.compile`; việc biên dịch tốn thêm vài giây mỗi trial, nên chỉ có lợi với trial dài"),
    "compute.threads": ("torch threads per worker process; unset: the cores split evenly between `--workers`",
                        "số thread torch của mỗi worker; bỏ trống: chia đều số lõi CPU cho các `--workers`"),
    "data.source": ("where the images come from; `fake` has random labels, for smoke tests only",
                    "nguồn ảnh; `fake` có nhãn ngẫu nhiên, chỉ dùng cho smoke test"),
    "data.path": ("image folder (`cifar10`: the folder holding `cifar-10-batches-py`); relative to the spec file",
                  "thư mục ảnh (`cifar10`: thư mục chứa `cifar-10-batches-py`); đường dẫn tương đối tính từ file spec"),
    "data.image_size": ("resize every image once to this side in pixels; needed when folder images differ in size",
                        "resize mọi ảnh một lần về cạnh này (pixel); bắt buộc khi ảnh trong thư mục khác kích thước"),
    "data.channels": ("1 or 3; mixed image modes are converted to it", "1 hoặc 3; ảnh khác mode được chuyển về số kênh này"),
    "data.fractions.train": ("share of images for training", "tỉ lệ ảnh dùng để train"),
    "data.fractions.train_dev": ("share held out from training, from the training distribution",
                                 "tỉ lệ giữ lại, không train, cùng phân phối với train"),
    "data.fractions.dev": ("share for dev, where trials are compared", "tỉ lệ cho dev, nơi so sánh các trial"),
    "data.fractions.test": ("share for the final test only; the four add up to 1",
                            "tỉ lệ chỉ dùng cho test cuối cùng; bốn tỉ lệ cộng lại bằng 1"),
    "data.split_seed": ("seed of the stratified split; a study keeps one split", "seed của phép chia phân tầng; một study giữ một cách chia"),
    "data.fake_size": ("number of `fake` images", "số ảnh `fake`"),
    "data.fake_classes": ("number of `fake` classes", "số lớp `fake`"),
    "data.fake_offset": ("FakeData `random_offset`; equal offsets give identical images",
                         "`random_offset` của FakeData; cùng offset cho ra ảnh giống hệt nhau"),
    "data.dev_test.source": ("source of dev and test; unset: the training images, shifted",
                             "nguồn của dev và test; bỏ trống: chính ảnh train, đã shift"),
    "data.dev_test.path": ("folder of the dev/test source", "thư mục của nguồn dev/test"),
    "data.dev_test.fake_size": ("number of `fake` dev/test images", "số ảnh `fake` cho dev/test"),
    "data.dev_test.fake_offset": ("FakeData `random_offset` of dev/test", "`random_offset` FakeData của dev/test"),
    "data.dev_test.shift.brightness": ("multiply dev/test pixel values by this", "nhân giá trị pixel của dev/test với hệ số này"),
    "data.dev_test.shift.contrast": ("scale deviations from each image's mean by this",
                                     "nhân độ lệch so với trung bình của mỗi ảnh với hệ số này"),
    "data.dev_test.shift.rotate": ("rotate dev/test images by this many degrees", "xoay ảnh dev/test ngần ấy độ"),
    "data.duplicates": ("identical images in two split parts: stop (`error`) or warn",
                        "ảnh giống hệt nhau nằm ở hai tập: dừng (`error`) hoặc cảnh báo"),
    "data.bad_files": ("non-image, empty or unreadable files: stop with a list (`error`) or leave out and list (`skip`)",
                       "file không phải ảnh, rỗng hoặc hỏng: dừng và liệt kê (`error`) hoặc bỏ qua và liệt kê (`skip`)"),
    "data.cache": ("keep decoded `cifar10` and `imagefolder` images on disk, keyed by a hash of the files, "
                   "in `$PLAYBOOK_CACHE_DIR` (default `~/.cache/playbook`)",
                   "lưu ảnh `cifar10` và `imagefolder` đã giải mã xuống đĩa, theo mã băm nội dung file, "
                   "trong `$PLAYBOOK_CACHE_DIR` (mặc định `~/.cache/playbook`)"),
    "model.arch": ("architecture, or `{choices: [...]}` to search over several", "kiến trúc, hoặc `{choices: [...]}` để tìm trong nhiều kiến trúc"),
    "model.pretrained.weights": ("file of torchvision's ImageNet ResNet-18 state dict; unset: the torch hub cache",
                                 "file state dict ResNet-18 ImageNet của torchvision; bỏ trống: torch hub cache"),
    "model.pretrained.allow_random_init": ("without weights, train `resnet18_transfer` from random weights (runs are tagged)",
                                           "không có weights thì train `resnet18_transfer` từ weights ngẫu nhiên (run được gắn tag)"),
    "train.optimizer": ("`adam`, `adamw` or `sgd` (Nesterov momentum)", "`adam`, `adamw` hoặc `sgd` (momentum Nesterov)"),
    "train.lr": ("learning rate", "learning rate"),
    "train.weight_decay": ("L2 penalty", "hệ số L2"),
    "train.momentum": ("SGD momentum", "momentum của SGD"),
    "train.batch_size": ("images per step; a last batch under 4 joins the previous one",
                         "số ảnh mỗi bước; batch cuối dưới 4 ảnh được gộp vào batch trước"),
    "train.epochs": ("passes over the train split", "số lần duyệt tập train"),
    "train.dropout": ("dropout before the classifier", "dropout trước lớp phân loại"),
    "train.schedule": ("`cosine` decay to 0, or `constant`", "giảm theo `cosine` về 0, hoặc `constant`"),
    "train.augment_flip": ("random horizontal flips, as a batched tensor operation",
                           "lật ngang ngẫu nhiên, làm theo batch trên tensor"),
    "train.augment_crop": ("zero padding in pixels before a random crop back to the image size, batched; 0: off",
                           "số pixel đệm 0 trước khi cắt ngẫu nhiên về lại kích thước ảnh, làm theo batch; 0: tắt"),
    "objective.metric": ("the optimizing metric, on dev", "metric tối ưu, đo trên dev"),
    "objective.constraints": ("satisficing metrics, each `{metric, max}` or `{metric, min}`",
                              "các metric ràng buộc, mỗi cái `{metric, max}` hoặc `{metric, min}`"),
    "search.trials": ("trials per `playbook run`", "số trial mỗi lần `playbook run`"),
    "search.sampler": ("random search", "random search"),
    "search.pruner": ("prune on the per-epoch dev objective; needs an accuracy, precision, recall or F1 objective",
                      "cắt sớm theo metric tối ưu trên dev sau mỗi epoch; cần metric accuracy, precision, recall hoặc F1"),
    "search.pruner_warmup_epochs": ("median: epochs before pruning; hyperband: minimum resource",
                                    "median: số epoch trước khi được cắt; hyperband: resource tối thiểu"),
    "search.pruner_startup_trials": ("median: trials that complete before any is pruned",
                                     "median: số trial hoàn tất trước khi bắt đầu cắt"),
    "search.timeout_s": ("stop starting trials after this many seconds", "ngừng bắt đầu trial mới sau ngần ấy giây"),
    "search.heartbeat_interval_s": ("seconds between a running trial's heartbeats", "số giây giữa hai heartbeat của trial đang chạy"),
    "search.grace_period_s": ("seconds of silence after which a running trial counts as dead",
                              "số giây im lặng để coi một trial đang chạy là đã chết"),
    "latency.batch_size": ("images per timed forward pass", "số ảnh mỗi lần đo forward"),
    "latency.warmup": ("untimed passes first", "số lần chạy khởi động, không tính giờ"),
    "latency.repeats": ("timed passes behind p50 and p95", "số lần đo dùng để tính p50 và p95"),
    "error_analysis.categorizers.brightness.dark_percentile": ("train brightness percentile below which an image is too dark",
                                                              "percentile độ sáng ảnh train, dưới mức này là quá tối"),
    "error_analysis.categorizers.brightness.bright_percentile": ("train brightness percentile above which an image is too bright",
                                                                "percentile độ sáng ảnh train, trên mức này là quá sáng"),
    "error_analysis.categorizers.brightness.dark": ("fixed too-dark cut-off in [0, 1], over the percentile",
                                                    "ngưỡng quá tối cố định trong [0, 1], thay cho percentile"),
    "error_analysis.categorizers.brightness.bright": ("fixed too-bright cut-off in [0, 1], over the percentile",
                                                      "ngưỡng quá sáng cố định trong [0, 1], thay cho percentile"),
    "error_analysis.categorizers.contrast.percentile": ("train percentile of RMS contrast below which an image is low-contrast",
                                                        "percentile độ tương phản RMS của ảnh train, dưới mức này là tương phản thấp"),
    "error_analysis.categorizers.contrast.threshold": ("fixed low-contrast cut-off", "ngưỡng tương phản thấp cố định"),
    "error_analysis.categorizers.blur.percentile": ("train percentile of the Laplacian variance below which an image is blurry",
                                                    "percentile phương sai Laplacian của ảnh train, dưới mức này là mờ"),
    "error_analysis.categorizers.blur.threshold": ("fixed blur cut-off", "ngưỡng mờ cố định"),
    "error_analysis.categorizers.low_confidence.threshold": ("an error whose top probability is below this",
                                                             "lỗi có xác suất cao nhất dưới mức này"),
    "error_analysis.categorizers.high_confidence.threshold": ("an error at or above this probability (label-noise suspect)",
                                                              "lỗi có xác suất từ mức này trở lên (nghi nhãn sai)"),
    "error_analysis.categorizers.confused_pairs.count": ("most-confused (true, predicted) pairs that become categories",
                                                         "số cặp (nhãn đúng, nhãn dự đoán) bị nhầm nhiều nhất được lấy làm nhóm lỗi"),
    "error_analysis.manual_tags": ("CSV with columns `index,tag`; each tag becomes a category `tag:<name>`",
                                   "file CSV có cột `index,tag`; mỗi tag thành một nhóm lỗi `tag:<name>`"),
    "error_analysis.grid_size": ("errors shown in `misclassified.png`", "số lỗi hiển thị trong `misclassified.png`"),
    "error_analysis.gallery_size": ("errors shown per category gallery", "số lỗi hiển thị trong gallery mỗi nhóm"),
    "diagnosis.human_level_error": ("proxy for the optimal error, as a fraction; unset: 0",
                                    "giá trị xấp xỉ sai số tối ưu, dạng tỉ lệ; bỏ trống: 0"),
    "diagnosis.min_gap": ("gaps at or below this, or within two standard errors of sampling noise, get no advice",
                          "khoảng cách không vượt mức này, hoặc nằm trong hai độ lệch chuẩn của nhiễu lấy mẫu, thì không kèm gợi ý"),
}

# Text fields whose values come from a fixed set.
ALLOWED: dict[str, tuple[str, ...]] = {
    "model.arch": tuple(models.ARCHITECTURES),
    "train.optimizer": OPTIMIZERS,
    "train.schedule": SCHEDULES,
    "objective.metric": tuple(METRICS),
}

HEADERS = {"en": ("field", "type", "default", "meaning"), "vi": ("field", "kiểu", "mặc định", "ý nghĩa")}
KNOB_TEXT = {"en": "knob of `{arch}`, searched as `{arch}.{knob}`", "vi": "knob của `{arch}`, tìm kiếm dưới tên `{arch}.{knob}`"}


def fields(model: type[BaseModel] = StudySpec, instance: Any = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """List (path, type, default) of every leaf field, taking defaults from the default instances."""
    rows = []
    for name, field in model.model_fields.items():
        path = prefix + name
        if instance is not None:
            default = getattr(instance, name)
        else:
            default = field.default
        nested = _nested_model(field.annotation)
        if nested is not None:
            rows += fields(nested, default if isinstance(default, BaseModel) else None, path + ".")
            continue
        if field.annotation == Param:
            type_text = _param_type_text(path, field.default)
        elif path in ALLOWED:
            type_text = " \\| ".join(f"`{value}`" for value in ALLOWED[path])
        else:
            type_text = _type_text(field.annotation)
        rows.append((path, type_text, _default_text(default)))
    return rows


def knob_rows() -> list[tuple[str, str, str, str]]:
    """List (path, type, default, architecture) of every architecture knob in the registry."""
    rows = []
    for arch, architecture in models.ARCHITECTURES.items():
        for knob_name, knob in architecture.knobs.items():
            kind = " \\| ".join(f"`{value}`" for value in knob.allowed) if knob.allowed else knob.kind
            bounds = "" if knob.minimum is None else f" in [{knob.minimum:g}, {knob.maximum:g}]"
            rows.append((f"model.{arch}.{knob_name}", f"{kind}{bounds}, searchable", f"`{knob.default}`", arch))
    return rows


def render(lang: str = "en") -> str:
    """Return the reference as a markdown table in ``lang``."""
    column = 0 if lang == "en" else 1
    header = HEADERS[lang]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|---|"]
    for path, type_text, default in fields():
        lines.append(f"| `{path}` | {_words(type_text, lang)} | {_words(default, lang)} | {DOCS[path][column]} |")
    for path, type_text, default, arch in knob_rows():
        knob = path.rsplit(".", 1)[1]
        lines.append(f"| `{path}` | {_words(type_text, lang)} | {default} | "
                     f"{KNOB_TEXT[lang].format(arch=arch, knob=knob)} |")
    return "\n".join(lines)


# The few English words of the type and default columns, in Vietnamese.
_VIETNAMESE = {"; fixed, range or choices": "; cố định, khoảng hoặc choices", " or none": " hoặc không có",
               ", searchable": ", tìm kiếm được", "required": "bắt buộc", " in [": " trong ["}


def _words(text: str, lang: str) -> str:
    if lang != "vi":
        return text
    for english, vietnamese in _VIETNAMESE.items():
        text = text.replace(english, vietnamese)
    return "không có" if text == "none" else text


def embed(readme: Path, lang: str) -> str:
    """Return ``readme``'s text with the reference between the markers replaced by ``render(lang)``."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(START_MARKER) + len(START_MARKER), text.index(END_MARKER)
    return text[:start] + "\n" + render(lang) + "\n" + text[end:]


def _param_type_text(path: str, default: Any) -> str:
    if path in ALLOWED:
        kind = " \\| ".join(f"`{value}`" for value in ALLOWED[path])
    else:
        kind = type(default.value).__name__
    return f"{kind}; fixed, range or choices"


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is list:
        return None
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        parts = [_type_text(arg) for arg in typing.get_args(annotation) if arg is not type(None)]
        return " \\| ".join(parts) + " or none"
    if origin is typing.Annotated:
        return "value, range or choices"
    if origin is list:
        return "list"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(default: Any) -> str:
    if default is PydanticUndefined:
        return "required"
    if default is None:
        return "none"
    if isinstance(default, Fixed):
        return f"`{default.value}`"
    if isinstance(default, Choice):
        return f"`{{choices: {list(default.choices)}}}`"
    if isinstance(default, list):
        return ", ".join(f"`{item.metric} {'<=' if item.max is not None else '>='} "
                         f"{item.max if item.max is not None else item.min:g}`" for item in default) or "none"
    return f"`{default}`"
