"""Training's messages in Chinese (see web/core_messages.py for the template syntax): its settings, where a job
runs and why (the planner's reason), why it cannot run, how it ended, and the jobs' own files."""

MESSAGES = [
    # ---- where a job runs, and why (training/planner.py) ----
    (("Training runs in {where}[[{_checkpointing: with activation checkpointing}]]: about {needed} needed, {free} "
      "free[[; {others}]][[ (placement {placement}, quantization {quantization} as asked)]]."),
     ("训练在{where}中运行[[（启用激活检查点）{_checkpointing}]]：约需 {needed}，空闲 {free}"
      "[[；{others}]][[（按要求使用 placement {placement}、quantization {quantization}）]]。")),
    ("{way} would need {needed:[\\d.]+ GB}", "{way}需要 {needed}"),
    ("its own process with its own copy of the base", "独立进程（使用自己的基础模型副本）"),
    ("the app process on the served weights (shared)", "应用进程（共用正在服务的权重，shared）"),
    ("its own process with the base in NF4 (QLoRA)", "独立进程（基础模型为 NF4，QLoRA）"),
    ("This training job needs about {needed}, {free} free ({tried:[^)]*}): {advice}.",
     "这个训练任务约需 {needed}，空闲 {free}（{tried}）：{advice}。"),
    ("lower max_length or batch_size", "降低 max_length 或 batch_size"),
    ("lower max_length or batch_size or set gradient_checkpointing to auto or on",
     "降低 max_length 或 batch_size，或把 gradient_checkpointing 设为 auto 或 on"),
    ("lower max_length or batch_size or choose QLoRA (quantization nf4)",
     "降低 max_length 或 batch_size，或选择 QLoRA（quantization nf4）"),
    ("lower max_length or batch_size, set gradient_checkpointing to auto or on or choose QLoRA (quantization nf4)",
     "降低 max_length 或 batch_size、把 gradient_checkpointing 设为 auto 或 on，或选择 QLoRA（quantization nf4）"),
    (("QLoRA trains the job's own 4-bit copy of the base, so it cannot share the served weights: set placement to "
      "auto or process with quantization nf4, or quantization to none with placement shared."),
     ("QLoRA 训练的是任务自己的 4 位基础模型副本，无法共用正在服务的权重：请在 quantization nf4 时把 placement 设为 auto 或 "
      "process，或在 placement shared 时把 quantization 设为 none。")),
    (("placement shared trains on the model this app serves, but chat goes to a remote backend here: set placement "
      "to auto or process."), "placement shared 在本应用服务的模型上训练，但这里的对话走远程后端：请把 placement 设为 auto 或 process。"),
    (("Job {job} trains beside chat on the served model (placement shared), but this app has no model in its own "
      "process (chat goes to a remote backend); start a new job with placement process instead."),
     ("任务 {job} 要在正在服务的模型上与对话并行训练（placement shared），但本应用的进程内没有模型（对话走远程后端）；"
      "请改用 placement process 新建任务。")),
    # ---- its settings (training/params.py, training/methods, training/lora.py, training/tracking.py) ----
    ("{name} must be a number, got {value}", "{name} 必须是数字，实际为 {value}"),
    ("{name} must be in {range}, got {value}", "{name} 必须在 {range} 之内，实际为 {value}"),
    ("{name} must be one of {choices}, got {value}", "{name} 必须是 {choices} 之一，实际为 {value}"),
    ("gradient_checkpointing must be auto, on or off, got {value}", "gradient_checkpointing 必须是 auto、on 或 off，实际为 {value}"),
    ("target_modules must be 1-32 module names such as q_proj, v_proj (letters, digits, '_' or '.')",
     "target_modules 必须是 1-32 个模块名，例如 q_proj、v_proj（字母、数字、'_' 或 '.'）"),
    ("system_prompt must be text of at most {limit} characters", "system_prompt 必须是不超过 {limit} 个字符的文本"),
    ("unknown training parameter(s): {names}", "未知的训练参数：{names}"),
    ("unknown preset {name}; choose one of {names}", "未知的预设 {name}；请从 {names} 中选择"),
    ("Unknown preset {name}; choose one of {names}.", "未知的预设 {name}；请从 {names} 中选择。"),
    ("Unknown training method {name}; the known methods are: {names}.", "未知的训练方法 {name}；已知的方法有：{names}。"),
    ("An evaluation split needs at least 2 trainable examples; set eval_fraction to 0",
     "验证集至少需要 2 条可训练样本；请把 eval_fraction 设为 0"),
    ("There is no adapter named {name} to continue from.", "没有名为 {name} 的适配器可供继续训练。"),
    ("None of the LoRA target modules {modules} exist in this model; its linear layers are: {layers}",
     "该模型中没有任何 LoRA 目标模块 {modules}；它的线性层有：{layers}"),
    (("report_to={tracker} needs the {package} package: install {_package} (pip install {_pip}) or choose "
      "report_to=none."), "report_to={tracker} 需要 {package} 包：请安装它（pip install {package}），或选择 report_to=none。"),
    # ---- a job's life (training/runner.py, training/registry.py, training/train.py, jobs/) ----
    ("A training job is already running (job {job}); wait for it to finish or cancel it.",
     "已有训练任务在运行（任务 {job}）；请等它结束或取消它。"),
    ("Job {job} is already {state}; there is nothing to cancel.", "任务 {job} 已是“{state}”状态；没有可取消的内容。"),
    ("Job {job} is {state}; only an interrupted job can be resumed.", "任务 {job} 的状态是“{state}”；只有被中断的任务才能继续。"),
    ("Could not copy the dataset into the job folder ({detail}); no job was created.",
     "无法把数据集复制到任务目录（{detail}）；没有创建任务。"),
    ("Could not write the {kind}'s files ({detail}); no {_kind} was created.", "无法写入{kind}的文件（{detail}）；没有创建{kind}。"),
    ("Could not start the {kind} process ({detail}).", "无法启动{kind}进程（{detail}）。"),
    ("There is no {kind} {job}.", "没有{kind} {job}。"),
    ("The {kind}'s process exited with code {code} before reporting why. Last log lines:\n{tail}",
     "{kind}进程在报告原因之前就以代码 {code} 退出了。最后几行日志：\n{tail}"),
    ("{message} The trained adapter is kept in {path}.", "{message} 训练好的适配器保存在 {path}。"),
    (("Out of memory[[ at step {step:\\d+}]]. Lower batch_size or max_length, or set gradient_checkpointing to on, "
      "then start the job again."),
     "内存不足[[（第 {step} 步）]]。请降低 batch_size 或 max_length，或把 gradient_checkpointing 设为 on，然后重新开始任务。"),
    ("Training failed[[ at step {step:\\d+}]]: {reason}. Fix that, then resume the job (details in the log).",
     "训练失败[[（第 {step} 步）]]：{reason}。请先解决它，然后继续任务（详情见日志）。"),
    ("Training failed[[ at step {step:\\d+}]] ({kind}); the job's log shows what went wrong.",
     "训练失败[[（第 {step} 步）]]（{kind}）；任务日志里有出错的经过。"),
    ("training job", "训练任务"),
    ("export", "导出任务"),
    ("evaluation", "评估任务"),
    ("input/output error", "输入/输出错误"),
    # ---- job states, as a message names them ----
    ("queued", "排队中"),
    ("running", "运行中"),
    ("completed", "已完成"),
    ("cancelled", "已取消"),
    ("failed", "失败"),
    ("interrupted", "已中断"),
]
