"""The service layer's messages in Chinese (see web/core_messages.py for the template syntax): who may change
things, comparing and evaluating adapters, collected feedback, and the server's own failure."""

MESSAGES = [
    # ---- who may train, delete, download or push (service/permissions.py, settings.py) ----
    (("Training, deleting and pushing adapters are off because this app is reachable by anyone without a password. "
      "Start it with --auth USER:PASS (or LLAMA_SPACE_AUTH), or set LLAMA_SPACE_ALLOW_PUBLIC_CHANGES=true to allow "
      "them for everyone."),
     ("训练、删除和推送适配器已关闭，因为任何人无需密码都能访问本应用。请用 --auth USER:PASS（或 LLAMA_SPACE_AUTH）启动，"
      "或设置 LLAMA_SPACE_ALLOW_PUBLIC_CHANGES=true 向所有人开放。")),
    ("Sign in with Hugging Face (button at the top) to train, delete, download or push adapters.",
     "请用 Hugging Face 登录（顶部按钮）后再训练、删除、下载或推送适配器。"),
    (("Only the Space owner may train, delete, download or push adapters on this Space; you are signed in as {user}. "
      "Duplicate the Space to train your own."), "只有 Space 的所有者才能在此训练、删除、下载或推送适配器；你当前登录的是 {user}。请复制这个 Space 来训练你自己的。"),
    (("Only {owner} may train, delete, download or push adapters on this Space; you are signed in as {user}. "
      "Duplicate the Space to train your own."), "只有 {owner} 才能在此 Space 上训练、删除、下载或推送适配器；你当前登录的是 {user}。请复制这个 Space 来训练你自己的。"),
    ("Training jobs (their ids, logs and held-out rows) are shown only to those who may train here. {reason}",
     "训练任务（其 id、日志和留出的数据行）只向可以在此训练的人显示。{reason}"),
    # ---- adapters (service/actions.py) ----
    ("Choose an adapter to delete (the base model cannot be deleted).", "请选择要删除的适配器（基础模型不能删除）。"),
    ("Choose an adapter to download.", "请选择要下载的适配器。"),
    # ---- comparing (service/compare.py) ----
    ("Compare at most {limit} adapters at once (got {count}).", "一次最多对比 {limit} 个适配器（收到 {count} 个）。"),
    ("Choose the base model or at least one adapter to compare.", "请选择基础模型或至少一个适配器来对比。"),
    ("adapters must be a list of adapter names", "adapters 必须是适配器名称的列表"),
    ("max_prompts must be a whole number between 1 and {limit}", "max_prompts 必须是 1 到 {limit} 之间的整数"),
    ("Upload a prompts file (JSONL or CSV) or choose a training job's held-out split.",
     "请上传提示文件（JSONL 或 CSV），或选择一个训练任务留出的验证集。"),
    ("Jobs are not available here; upload a file instead.", "此处无法使用任务；请改为上传文件。"),
    # ---- evaluating (service/evaluate.py, service/evaluation_jobs.py) ----
    (("Evaluation needs the model in this process; it is not available with a remote chat backend (--backend-url) "
      "or on ZeroGPU (where the model runs only inside GPU calls)."),
     "评估需要模型在本进程中；使用远程对话后端（--backend-url）或在 ZeroGPU 上（模型只在 GPU 调用内运行）时不可用。"),
    ("Choose at least one adapter to evaluate against the base model.", "请至少选择一个适配器，与基础模型对比评估。"),
    ("Upload a dataset file or choose a training job whose held-out split to evaluate on.",
     "请上传数据集文件，或选择一个训练任务，用它留出的验证集来评估。"),
    ("An evaluation is already running ({evaluation}); wait for it to finish or cancel it.",
     "已有评估在运行（{evaluation}）；请等它结束或取消它。"),
    ("Dataset file {file} not found; upload it again.", "找不到数据集文件 {file}；请重新上传。"),
    ("Could not copy the data for the evaluation ({detail}); nothing was started.", "无法复制评估用的数据（{detail}）；没有开始任何评估。"),
    ("The evaluation {state}.", "评估{state}。"),
    ("The evaluation failed ({kind}); the server log has the details.", "评估失败（{kind}）；详情见服务器日志。"),
    ("The evaluation stopped before it finished (the app that ran it ended); start it again.",
     "评估在完成前停止了（运行它的应用已结束）；请重新开始。"),
    ("Reading the data...", "正在读取数据……"),
    ("Cancelled; nothing was saved.", "已取消；没有保存任何内容。"),
    ("Loss of {model}: {done}/{total} rows", "{model} 的损失：{done}/{total} 行"),
    ("Preference of {model}: {done}/{total} pairs", "{model} 的偏好：{done}/{total} 对"),
    ("Answers: {done}/{total} prompts", "回答：{done}/{total} 个提示"),
    ("Evaluated {rows} rows of {source}.", "已评估 {source} 的 {rows} 行。"),
    ("Adapter {name}'s metadata file cannot be read, so its evaluation was not saved (the file was left as it is).",
     "适配器 {name} 的元数据文件无法读取，所以没有保存它的评估（文件保持原样）。"),
    ("Adapter {name}'s evaluation was not saved ({detail}); was it deleted meanwhile?",
     "适配器 {name} 的评估没有保存（{detail}）；它是否在此期间被删除了？"),
    ("{name} must be a whole number between {low} and {high}, got {value}", "{name} 必须是 {low} 到 {high} 之间的整数，实际为 {value}"),
    ("generate_answers must be true or false, got {value}", "generate_answers 必须是 true 或 false，实际为 {value}"),
    # ---- feedback (service/feedback.py) ----
    ("{count} feedback marks are stored: download and clear them before adding more.",
     "已存有 {count} 条反馈标记：请先下载并清空，再添加更多。"),
    ("reply is empty: mark a reply the model gave", "回复为空：请标记模型给出的回复"),
    ("An edit needs the reply it should have been (edited), different from the reply.", "修改需要给出应有的回复（edited），且要与原回复不同。"),
    ("A pick needs the other replies it is better than (other_replies).", "选择需要给出它胜过的其他回复（other_replies）。"),
    ("conversation holds more than {limit} characters: mark a shorter one", "对话超过 {limit} 个字符：请标记较短的对话"),
    ("conversation must be a list of at most {limit} {{role, content}} messages",
     "conversation 必须是最多 {limit} 条 {{role, content}} 消息的列表"),
    ("reply, edited and other_replies must be text of at most {limit} characters",
     "reply、edited 和 other_replies 必须是不超过 {limit} 个字符的文本"),
    ("kind must be one of {kinds} ({value})", "kind 必须是 {kinds} 之一（{value}）"),
    ("kind must be one of {kinds}", "kind 必须是 {kinds} 之一"),
    ("No feedback makes {kind} rows yet: mark replies in Chat or Compare first.",
     "还没有能组成 {kind} 数据行的反馈：请先在“对话”或“对比”中标记回复。"),
    # ---- the server's own failure (web/error_boundary.py: the text hides what failed) ----
    ("The server failed while {_what}; the server log has the details. Try again in a moment.",
     "服务器出错，详情见服务器日志。请稍后重试。"),
]
