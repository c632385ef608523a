"""The Fine-tune tab's text: every setting's label and, in plain words, what it does and when to change it."""

STRINGS = {
    "ft.upload": ("Training data: instructions or preference pairs (JSON, JSONL, CSV or Parquet)",
                  "训练数据：指令数据或偏好对（JSON、JSONL、CSV 或 Parquet）"),
    "ft.hub": ("…or a dataset from the Hugging Face Hub or ModelScope", "……或来自 Hugging Face Hub / ModelScope 的数据集"),
    "ft.hub_id": ("Dataset id", "数据集 ID"),
    "ft.hub_id_ph": ("owner/name or modelscope:owner/name", "所有者/名称 或 modelscope:所有者/名称"),
    "ft.hub_config": ("Configuration", "配置"),
    "ft.hub_config_ph": ("default", "默认"),
    "ft.hub_split": ("Split", "数据划分"),
    "ft.hub_revision": ("Revision", "版本"),
    "ft.hub_load": ("Check the Hub dataset", "检查 Hub 数据集"),
    "ft.problems": ("Problems", "问题"),
    "ft.adapter_name": ("Adapter name", "适配器名称"),
    "ft.adapter_name_ph": ("my-adapter", "my-adapter"),
    "ft.adapter_name_info": ("The name it gets in the Chat, Adapters and Export tabs.",
                             "它在“对话”“适配器”“导出”页中显示的名称。"),
    "ft.preset": ("Preset", "预设"),
    "ft.preset_info": (("standard: the defaults for a real run. quick: a short run (30 steps, higher learning rate) "
                       "to see the model change; with the embedded model and the persona example, 3-4.5 s a step "
                       "on 2 CPU cores, about 2 minutes in all."),
                       ("标准：正式训练的默认值。快速：短训练（30 步、较高学习率），用来看到模型的变化；"
                       "内置模型配合 persona.jsonl 示例，在 2 个 CPU 核上每步 3-4.5 秒，共约 2 分钟。")),
    "ft.preset.standard": ("standard", "标准"),
    "ft.preset.quick": ("quick", "快速"),
    "ft.settings": ("Training settings", "训练设置"),
    "ft.start": ("Start training", "开始训练"),
    "ft.resume": ("Resume", "继续训练"),
    "ft.estimate": ("About {steps} steps, roughly {time} on this device (from {source}).",
                    "约 {steps} 步，在本设备上大约需要 {time}（依据：{source}）。"),
    "ft.estimate_unknown": ("About {steps} steps; the time shows once the first steps are measured.",
                            "约 {steps} 步；测出前几步后会显示所需时间。"),
    "ft.estimate_measured": ("the steps measured on this device", "本设备上测得的步速"),
    "ft.report_ok": ("{summary}", "{summary}"),
    "ft.report_line": (("Format: {format} ({kind}) · rows: {rows} · trained: {valid} · skipped: {skipped} · "
                       "duplicates: {duplicates} · longer than max length ({max_length}): {too_long}"),
                       ("格式：{format}（{kind}）· 行数：{rows} · 参与训练：{valid} · 跳过：{skipped} · 重复：{duplicates} · "
                       "超过最大长度（{max_length}）：{too_long}")),
    "ft.data.instruction": ("instruction data", "指令数据"),
    "ft.data.preference": ("preference data", "偏好数据"),
    "ft.fresh_lora": ("none: a fresh LoRA", "无：全新的 LoRA"),
    "ft.tokens_line": ("Tokens per row: min {min} · median {median} · p95 {p95} · max {max} (max length {max_length})",
                       "每行 token 数：最少 {min} · 中位数 {median} · p95 {p95} · 最多 {max}（最大长度 {max_length}）"),
    "ft.kind.error": ("error", "错误"),
    "ft.kind.warning": ("warning", "警告"),
    "ft.col.kind": ("kind", "类型"),
    "ft.col.row": ("row", "行"),
    "ft.col.message": ("message", "说明"),
    "ft.started": ("Training job {job} started.", "训练任务 {job} 已开始。"),
    "field.learning_rate": ("Learning rate", "学习率"),
    "help.learning_rate": (("How big each update is. Lower it if the loss jumps around or rises; raise it if the loss "
                           "barely moves."), "每次更新的幅度。损失上下跳动或上升时调低；损失几乎不动时调高。"),
    "field.num_epochs": ("Epochs", "训练轮数"),
    "help.num_epochs": (("How many times training reads all your rows. More fits your data more closely (and may "
                        "parrot it). Ignored when Max steps is above 0."),
                        "训练把全部数据读几遍。越多越贴合数据（也可能死记硬背）。“最多步数”大于 0 时忽略。"),
    "field.max_steps": ("Max steps (0 = no limit)", "最多步数（0 = 不限）"),
    "help.max_steps": ("Stop after this many updates, whatever the epochs say. 0 means: run the epochs in full.",
                       "更新这么多次后停止，不管轮数。0 表示按轮数完整训练。"),
    "field.batch_size": ("Rows per batch", "每批行数"),
    "help.batch_size": (("Rows the model reads at once. More is faster per row but needs more memory; lower it if "
                        "you run out of memory."), "模型一次读入的行数。越多越快但占内存更多；内存不足时调低。"),
    "field.grad_accum": ("Batches per update", "每次更新的批数"),
    "help.grad_accum": (("Batches added up before one update (gradient accumulation): a bigger effective batch "
                        "without more memory. Rows per update = rows per batch × this."),
                        "累积多少批后更新一次（梯度累积）：不多占内存也能得到更大的有效批量。每次更新的行数 = 每批行数 × 此值。"),
    "field.max_length": ("Max length (tokens)", "最大长度（token）"),
    "help.max_length": (("Rows longer than this are cut. Raise it if the report says many rows are too long; longer "
                        "rows need more memory."), "超过此长度的行会被截断。报告显示很多行过长时调高；行越长占内存越多。"),
    "field.lora_r": ("LoRA rank", "LoRA 秩"),
    "help.lora_r": (("Size of what the adapter can learn. 8 suits most tasks; 16–64 for a lot of new knowledge or "
                    "style, at the cost of a bigger adapter."),
                    "适配器能学多少内容。多数任务用 8；要学大量新知识或风格用 16–64，适配器会更大。"),
    "field.lora_alpha": ("LoRA strength (alpha)", "LoRA 强度（alpha）"),
    "help.lora_alpha": (("How strongly the adapter's changes count (they are scaled by alpha ÷ rank). Usually 2–4 × "
                        "the rank."), "适配器改动的权重（按 alpha ÷ 秩缩放）。通常取秩的 2–4 倍。"),
    "field.lora_dropout": ("LoRA dropout", "LoRA 丢弃率"),
    "help.lora_dropout": (("Share of the adapter's inputs dropped at random while training, against over-fitting. "
                          "0.05–0.1 is typical; 0 for tiny datasets."),
                          "训练时随机丢弃的适配器输入比例，用来防止过拟合。一般 0.05–0.1；数据很少时用 0。"),
    "field.eval_fraction": ("Held-out share for evaluation", "留作评估的比例"),
    "help.eval_fraction": (("Share of rows kept out of training to measure an eval loss (e.g. 0.1 = 10%). 0 = no "
                           "evaluation."), "不参与训练、用来计算评估损失的行的比例（如 0.1 = 10%）。0 = 不评估。"),
    "field.seed": ("Random seed", "随机种子"),
    "help.seed": (("Fixes the shuffling and the starting point, so the same settings give the same run. Change it to "
                  "try another draw."), "固定打乱顺序与初始值，相同设置得到相同结果。想换一次随机抽样时修改。"),
    "field.placement": ("Where training runs", "训练方式"),
    "help.placement": (("auto lets the memory planner choose. process: a separate process with its own copy of the "
                       "model. shared: trains on the weights the chat already serves (less memory)."),
                       "auto 由内存规划器选择。process：独立进程，自带一份模型。shared：直接在对话正在使用的权重上训练（省内存）。"),
    "field.quantization": ("Base model in 4 bits", "基础模型 4 位量化"),
    "help.quantization": (("nf4 loads the base model in 4 bits while training (QLoRA): about a quarter of the memory, "
                          "a little slower. none keeps full precision."),
                          "nf4 在训练时以 4 位加载基础模型（QLoRA）：内存约为四分之一，稍慢。none 保持全精度。"),
    "field.report_to": ("Experiment tracking", "实验跟踪"),
    "help.report_to": (("Also send the training curves to a tracker (it must be installed and set up). none: only "
                       "this page."), "同时把训练曲线发送到跟踪工具（需已安装并配置）。none：只在本页显示。"),
    "field.method": ("Training method", "训练方法"),
    "help.method": (("sft: learn to answer like the replies in your data. dpo and orpo: learn to prefer the chosen "
                    "reply over the rejected one (data with prompt, chosen and rejected; thumbs, edits and picks "
                    "make such pairs). orpo needs no reference model, so it takes less memory."),
                    ("sft：学习按数据中的回复方式作答。dpo 和 orpo：学习偏好“选中”的回复而非“被拒”的回复"
                     "（数据含 prompt、chosen、rejected；点赞、修改和挑选会生成这样的偏好对）。orpo 不需要参考模型，"
                     "占内存更少。")),
    "field.beta": ("Preference strength (beta)", "偏好强度（beta）"),
    "help.beta": (("dpo and orpo only. How hard training pushes toward the chosen replies: higher keeps the model "
                  "closer to where it started (dpo) or weighs the preference more (orpo). 0.1 is typical."),
                  ("仅用于 dpo 和 orpo。训练向“选中”回复靠拢的力度：dpo 中越高越贴近原模型，orpo 中越高越看重偏好。"
                   "一般取 0.1。")),
    "field.system_prompt": ("System prompt for rows without one", "无系统提示词的行所用的系统提示词"),
    "help.system_prompt": (("Given to every training row that has none, and used by default when you chat with the "
                           "adapter. Leave empty for none."),
                           "会加到每个没有系统提示词的训练行上，和这个适配器对话时也默认使用。留空表示不用。"),
    "field.from_adapter": ("Continue from adapter", "在已有适配器上继续训练"),
    "help.from_adapter": (("Train further an adapter you already have (for example sft first, then dpo on "
                          "feedback). none: start a fresh LoRA."),
                          "在已有的适配器上继续训练（例如先 sft，再用反馈做 dpo）。无：从全新的 LoRA 开始。"),
}
