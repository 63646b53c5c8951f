"""Message catalogue: every sentence a person reads in a study's output, in English and Vietnamese.

Log lines stay English; this catalogue covers the summary, the diagnosis and
report headings. ``text(key, lang, **values)`` formats one message.
"""

from __future__ import annotations

LANGUAGES = ("en", "vi")

CATALOGUE: dict[str, dict[str, str]] = {
    # Summary table
    "summary.title": {
        "en": "Study '{study}': {total} trials ({new} new in this run)",
        "vi": "Study '{study}': {total} trial ({new} trial mới trong lần chạy này)",
    },
    "summary.states": {
        "en": "complete {complete} · pruned {pruned} · failed {failed} · feasible {feasible}",
        "vi": "hoàn tất {complete} · bị cắt sớm {pruned} · lỗi {failed} · đạt ràng buộc {feasible}",
    },
    "summary.objective": {
        "en": "Optimizing metric: dev {metric} ({direction}); constraints: {constraints}",
        "vi": "Metric tối ưu: {metric} trên dev ({direction}); ràng buộc: {constraints}",
    },
    "summary.maximize": {"en": "higher is better", "vi": "càng cao càng tốt"},
    "summary.minimize": {"en": "lower is better", "vi": "càng thấp càng tốt"},
    "summary.no_constraints": {"en": "none", "vi": "không có"},
    "summary.best": {
        "en": "Best feasible trial: #{number} (MLflow run {run_id})",
        "vi": "Trial tốt nhất đạt ràng buộc: #{number} (MLflow run {run_id})",
    },
    "summary.no_feasible": {
        "en": "No trial meets every constraint; none is reported as best. Relax a constraint or change the search space.",
        "vi": "Không trial nào thỏa mọi ràng buộc nên không có trial tốt nhất. Hãy nới ràng buộc hoặc đổi không gian tìm kiếm.",
    },
    "summary.no_complete": {
        "en": "No trial completed. Read the failed runs' error tags in MLflow or the log above.",
        "vi": "Không trial nào hoàn tất. Xem tag lỗi của các run thất bại trong MLflow hoặc log phía trên.",
    },
    "summary.params": {"en": "Params", "vi": "Tham số"},
    "summary.metric": {"en": "Dev metric", "vi": "Metric trên dev"},
    "summary.best_column": {"en": "best trial", "vi": "trial tốt nhất"},
    "summary.majority": {"en": "majority class", "vi": "lớp chiếm đa số"},
    "summary.linear": {"en": "linear, mean colour", "vi": "tuyến tính, màu trung bình"},
    "summary.mlflow_ui": {
        "en": "Compare the trials in the MLflow UI:",
        "vi": "So sánh các trial trong giao diện MLflow:",
    },
    # Diagnosis
    "diagnosis.title": {"en": "Diagnosis", "vi": "Chẩn đoán"},
    "diagnosis.errors": {
        "en": "Error: human-level {human} · train {train} · train-dev {train_dev} · dev {dev}",
        "vi": "Lỗi: mức con người {human} · train {train} · train-dev {train_dev} · dev {dev}",
    },
    "diagnosis.test": {
        "en": "Final test: error {test} · overfitting to dev (test − dev) {dev_overfitting}",
        "vi": "Test cuối cùng: lỗi {test} · overfit tập dev (test − dev) {dev_overfitting}",
    },
    "diagnosis.gap.dev_overfitting": {"en": "overfitting to dev", "vi": "overfit tập dev"},
    "advice.dev_overfitting": {
        "en": "Reduce overfitting to dev: the search tuned itself to the dev set, so get a bigger dev set, and compare fewer trials on it.",
        "vi": "Giảm overfit tập dev: quá trình tìm kiếm đã khớp theo tập dev, vì vậy hãy dùng tập dev lớn hơn và so sánh ít trial hơn trên nó.",
    },
    "diagnosis.human_assumed": {
        "en": "human-level error not set in the spec; 0 is used as the optimal error",
        "vi": "spec không đặt human-level error; dùng 0 làm sai số tối ưu",
    },
    "diagnosis.gap.avoidable_bias": {"en": "avoidable bias", "vi": "bias có thể tránh"},
    "diagnosis.gap.variance": {"en": "variance", "vi": "variance"},
    "diagnosis.gap.data_mismatch": {"en": "data mismatch", "vi": "lệch phân phối dữ liệu"},
    "diagnosis.gaps": {
        "en": "Gaps: avoidable bias {avoidable_bias} · variance {variance} · data mismatch {data_mismatch}",
        "vi": "Khoảng cách: bias có thể tránh {avoidable_bias} · variance {variance} · lệch dữ liệu {data_mismatch}",
    },
    "diagnosis.main": {
        "en": "Largest gap: {gap} ({value}). Next steps, most useful first:",
        "vi": "Khoảng cách lớn nhất: {gap} ({value}). Việc nên làm, quan trọng nhất trước:",
    },
    "diagnosis.none": {
        "en": "No gap exceeds {threshold}; the model is close to the stated optimum. Gather harder dev examples or lower the human-level estimate.",
        "vi": "Không khoảng cách nào vượt {threshold}; mô hình đã gần mức tối ưu đã nêu. Hãy thu thập ví dụ dev khó hơn hoặc xem lại ước lượng mức con người.",
    },
    "diagnosis.better_than_human": {
        "en": "Training error is {value} below the stated human level: the model beats that level on the training set, so bias is no longer a guide; look at variance and mismatch.",
        "vi": "Lỗi train thấp hơn mức con người đã nêu {value}: mô hình đã vượt mức đó trên tập train, nên bias không còn là chỉ dẫn; hãy xét variance và lệch dữ liệu.",
    },
    "advice.avoidable_bias": {
        "en": "Reduce avoidable bias: train a bigger model (more depth or width), train longer or with a better optimizer, and lower regularization (dropout, weight decay).",
        "vi": "Giảm bias có thể tránh: dùng mô hình lớn hơn (sâu hoặc rộng hơn), train lâu hơn hoặc với optimizer tốt hơn, và giảm regularization (dropout, weight decay).",
    },
    "advice.variance": {
        "en": "Reduce variance: get more training data or use augmentation, add regularization (dropout, weight decay), or stop training earlier.",
        "vi": "Giảm variance: thêm dữ liệu train hoặc dùng augmentation, tăng regularization (dropout, weight decay), hoặc dừng train sớm hơn.",
    },
    "advice.data_mismatch": {
        "en": "Reduce data mismatch: compare dev errors with train images by hand to see how the distributions differ, then make training data more like dev (collect it, or synthesize it).",
        "vi": "Giảm lệch dữ liệu: tự so sánh các lỗi trên dev với ảnh train để thấy phân phối khác nhau ở đâu, rồi làm dữ liệu train giống dev hơn (thu thập thêm hoặc tổng hợp).",
    },
    # Final test
    "final.title": {
        "en": "Final test of study '{study}', best feasible trial #{number} (run {runs} of the final test)",
        "vi": "Test cuối cùng của study '{study}', trial tốt nhất đạt ràng buộc #{number} (lần chạy test cuối thứ {runs})",
    },
    "final.earlier": {
        "en": "The final test already ran on this study; its earlier result:",
        "vi": "Study này đã chạy test cuối cùng; kết quả lần trước:",
    },
    # Report
    "report.title": {"en": "Study report: {study}", "vi": "Báo cáo study: {study}"},
    "report.baseline": {"en": "Baselines on dev", "vi": "Baseline trên dev"},
    "report.best_trials": {"en": "Best feasible trials", "vi": "Các trial tốt nhất đạt ràng buộc"},
    "report.history": {"en": "Optimization history", "vi": "Lịch sử tối ưu"},
    "report.importance": {"en": "Parameter importances", "vi": "Mức quan trọng của tham số"},
    "report.importance_needs": {
        "en": "Parameter importances need at least two complete trials with searched parameters.",
        "vi": "Cần ít nhất hai trial hoàn tất có tham số được tìm kiếm để tính mức quan trọng của tham số.",
    },
    "report.best_trial": {"en": "Best feasible trial #{number}", "vi": "Trial tốt nhất đạt ràng buộc #{number}"},
    "report.no_errors": {
        "en": "No dev errors: all {dev_size} dev images are classified correctly.",
        "vi": "Không có lỗi trên dev: cả {dev_size} ảnh dev đều được phân loại đúng.",
    },
    "report.param": {"en": "param", "vi": "tham số"},
    "report.value": {"en": "value", "vi": "giá trị"},
    "report.share_axis": {"en": "% of the {count} dev errors", "vi": "% trên tổng {count} lỗi trên dev"},
    "report.confusion": {"en": "Dev confusion matrix", "vi": "Confusion matrix trên dev"},
    "report.misclassified": {"en": "Misclassified dev images", "vi": "Ảnh dev bị phân loại sai"},
    # Error analysis
    "errors.title": {"en": "Dev errors by category", "vi": "Lỗi trên dev theo nhóm"},
    "errors.row": {
        "en": "{category}: {count} errors, {share} of errors, ceiling {ceiling}",
        "vi": "{category}: {count} lỗi, {share} tổng số lỗi, mức trần {ceiling}",
    },
}


def text(key: str, lang: str = "en", **values: object) -> str:
    """Return the message ``key`` in ``lang``, formatted with ``values``.

    Raises:
        KeyError: for an unknown key or a language the catalogue lacks.
    """
    if lang not in LANGUAGES:
        raise KeyError(f"unknown language '{lang}'; use one of {', '.join(LANGUAGES)}")
    return CATALOGUE[key][lang].format(**values)
