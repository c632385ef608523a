"""The Compare tab's text."""

STRINGS = {
    "cmp.adapters": ("Adapters (up to 4)", "适配器（最多 4 个）"),
    "cmp.include_base": ("Include the base model", "包含基础模型"),
    "cmp.prompt": ("Prompt", "提示词"),
    "cmp.run": ("Compare", "对比"),
    "cmp.base": ("base", "基础模型"),
    "cmp.file": ("A file of prompts", "提示词文件"),
    "cmp.file_help": (("JSONL or CSV with a `prompt` column (optional `system` and a reference answer in `reference`), "
                      "or training data (its last assistant reply is the reference), or a job's held-out split."),
                      ("含 `prompt` 列的 JSONL 或 CSV（可选 `system` 列，参考答案放在 `reference` 列），"
                      "或训练数据（最后一条助手回复作为参考答案），或某个任务留出的评估数据。")),
    "cmp.prompts_file": ("Prompts file", "提示词文件"),
    "cmp.job_split": ("…or a job's held-out split", "……或某个任务留出的评估数据"),
    "cmp.max_prompts": ("Max prompts", "最多提示词数"),
    "cmp.file_run": ("Answer every prompt", "回答全部提示词"),
    "cmp.answers": ("Answers", "回答"),
    "cmp.downloads": ("Download (CSV, JSONL)", "下载（CSV、JSONL）"),
    "cmp.progress": ("{done}/{total} prompts answered ({source})", "已回答 {done}/{total} 条提示词（{source}）"),
    "cmp.done": ("done", "完成"),
    "cmp.evaluate": ("Evaluate adapters", "评估适配器"),
    "cmp.evaluate_help": (("Loss and perplexity on the trained (assistant) tokens, masked as training masks them, for "
                          "the base and each chosen adapter; with reference answers, the share of greedy answers "
                          "that match exactly and that contain the reference. Results are saved into each "
                          "adapter's metadata."),
                          ("对基础模型和每个所选适配器，计算参与训练的（助手）token 上的损失与困惑度，掩码方式与训练相同；"
                          "若有参考答案，还统计贪心解码答案与参考完全一致、以及包含参考答案的比例。结果会保存到各适配器的元数据中。")),
    "cmp.dataset_file": ("Dataset file", "数据集文件"),
    "cmp.max_rows": ("Max rows", "最多行数"),
    "cmp.answer_refs": ("Also answer and match references", "同时作答并与参考答案比对"),
    "cmp.max_tokens_answer": ("Max new tokens per answer", "每个回答最多生成的 token 数"),
    "cmp.evaluate_run": ("Evaluate", "评估"),
    "cmp.evaluate_cancel": ("Cancel evaluation", "取消评估"),
    "cmp.figures": ("Figures", "指标"),
    "cmp.col.model": ("model", "模型"),
    "cmp.col.loss": ("loss", "损失"),
    "cmp.col.perplexity": ("perplexity", "困惑度"),
    "cmp.col.exact": ("exact match", "完全一致"),
    "cmp.col.contains": ("contains", "包含参考"),
    "cmp.col.tokens": ("tokens", "token 数"),
    "cmp.col.reward_accuracy": ("reward accuracy", "奖励准确率"),
    "cmp.col.reward_margin": ("reward margin", "奖励差值"),
    "cmp.cancelled": ("Evaluation cancelled; nothing was saved.", "评估已取消，未保存任何结果。"),
    "cmp.evaluated": ("Evaluated on {examples} rows of {source} ({references} with a reference answer).",
                      "已在 {source} 的 {examples} 行上评估（其中 {references} 行有参考答案）。"),
    "cmp.saved": (" Saved into the metadata of: {names} (see the Adapters tab).", " 已保存到以下适配器的元数据：{names}（见“适配器”页）。"),
    "cmp.cancelling": ("Cancelling…", "正在取消……"),
    "cmp.not_running": ("No evaluation is running.", "当前没有正在进行的评估。"),
}
