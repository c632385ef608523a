"""The data layer's messages in Chinese (see web/core_messages.py for the template syntax): refused files, a
row's problems, the data report's summary and warnings, Hub datasets, evaluation and prompt files."""

JSON_SHAPE = 'a JSON array of objects ([{{"instruction": ..., "output": ...}}, ...]) or JSON Lines (one object per line)'
SPLIT = "Split it into several files or remove rows."

MESSAGES = [
    # ---- the report's summary and its pieces (data/validate.py, data/preference_report.py) ----
    (("Nothing to train: none of the {total} rows is usable ({reasons}). Fix the rows listed and upload the file "
      "again.[[ First problems: {problems}.]]"),
     "没有可训练的数据：{total} 行中没有一行可用（{reasons}）。请修正列出的行后重新上传文件。[[最先发现的问题：{problems}。]]"),
    (("{training:\\d+} of {total:\\d+} rows ({format} format) will be trained[[; skipped: {skipped}]]"
      "[[; {long:\\d+} longer than {max_length:\\d+} tokens are truncated]]"
      "[[. Token counts are from rows 1-{through:\\d+} only: the other {untokenized:\\d+} usable rows were checked "
      "for format, not tokenized]].[[ First problems: {problems}.]]"),
     ("将训练 {total} 行中的 {training} 行（{format} 格式）[[；已跳过：{skipped}]]"
      "[[；{long} 行超过 {max_length} 个 token，将被截断]][[。token 统计只来自第 1-{through} 行：其余 {untokenized} 个可用行"
      "只检查了格式，未做分词]]。[[最先发现的问题：{problems}。]]")),
    (("{trained:\\d+} of {total:\\d+} preference pairs ({format} format) will be trained[[; skipped: {skipped}]]"
      "[[; {long:\\d+} longer than {max_length:\\d+} tokens have their replies cut]]."),
     ("将训练 {total} 个偏好对中的 {trained} 个（{format} 格式）[[；已跳过：{skipped}]]"
      "[[；{long} 个超过 {max_length} 个 token，回复将被截断]]。")),
    (("Nothing to train: none of the {total:\\d+} preference rows is usable[[; skipped: {skipped}]]"
      "[[; {long:\\d+} longer than {max_length:\\d+} tokens have their replies cut]]."),
     ("没有可训练的数据：{total} 个偏好行中没有一行可用[[；已跳过：{skipped}]]"
      "[[；{long} 个超过 {max_length} 个 token，回复将被截断]]。")),
    ("{count:\\d+} with errors", "{count} 行有错误"),
    ("{count:\\d+} exact duplicates", "{count} 行完全重复"),
    ("{count:\\d+} with no assistant token within {max_length:\\d+} tokens",
     "{count} 行在前 {max_length} 个 token 内没有助手 token"),
    ("row {row:\\d+}: {message:[^;]+}", "第 {row} 行：{message}"),  # one of a list joined by "; "
    ("None of the {total} rows is usable: {problems}.", "{total} 行中没有一行可用：{problems}。"),
    ("None of the {total} preference rows is usable: {problems}.", "{total} 个偏好行中没有一行可用：{problems}。"),
    ("exact duplicate of row {row}; skipped", "与第 {row} 行完全相同；已跳过"),
    ("no assistant token within max_length={max_length}; skipped", "在 max_length={max_length} 内没有助手 token；已跳过"),
    ("{count} rows are longer than max_length={max_length} tokens and are truncated: rows {rows}",
     "{count} 行超过 max_length={max_length} 个 token，将被截断：第 {rows} 行"),
    ("{listed} and {more:\\d+} more", "{listed} 等（另有 {more} 行）"),
    (("Token counts (token_stats, too_long, no_trainable, trainable_tokens) are from rows 1-{through} only: "
      "validation tokenizes at most {rows} rows or {chars} characters of chat-formatted text (rendered and "
      "tokenized). The other {untokenized} usable rows were checked for format only and are counted as trained; "
      "training tokenizes and checks every row."),
     ("token 统计（token_stats、too_long、no_trainable、trainable_tokens）只来自第 1-{through} 行：校验最多对 {rows} 行"
      "或 {chars} 个字符的对话格式文本做渲染和分词。其余 {untokenized} 个可用行只检查了格式，按可训练计入；训练时会对每一行分词并检查。")),
    ("{cells}: spreadsheet programs may run such a cell as a formula; check it is meant as text",
     "{cells}：电子表格程序可能把这样的单元格当作公式执行；请确认它本意是文本"),
    ("'{column}' starts with {char}", "'{column}' 以 {char} 开头"),
    # ---- a row's problems (data/formats.py, data/validate.py, data/preference.py, service/eval_data.py) ----
    ("'{field}' must be text, got {kind}", "'{field}' 必须是文本，实际是 {kind}"),
    ("'{field}' is empty", "'{field}' 为空"),
    ("'{field}' is missing", "缺少 '{field}'"),
    ("'{field}' must be a non-empty list of turns", "'{field}' 必须是非空的对话轮次列表"),
    (("'{field}' has {count} turns; conversations of at most {limit} turns are read: split it into shorter "
      "conversations"), "'{field}' 有 {count} 轮；最多读取 {limit} 轮的对话：请把它拆成较短的对话"),
    ("turn {n} of '{field}' must be an object with '{role_key}' and '{text_key}'",
     "'{field}' 的第 {n} 轮必须是含 '{role_key}' 和 '{text_key}' 的对象"),
    ("turn {n}: {role_key} {role} is not one of {roles}", "第 {n} 轮：{role_key} {role} 不是 {roles} 之一"),
    ("turn {n}: a system message may only come first", "第 {n} 轮：system 消息只能放在最前面"),
    ("the conversation must start with a user turn (after an optional system message)",
     "对话必须以 user 轮开始（前面可以有一条 system 消息）"),
    ("the conversation has no assistant turn to learn from", "对话中没有可供学习的 assistant 轮"),
    ("turn {n}: the assistant reply is empty", "第 {n} 轮：assistant 回复为空"),
    ("turn {n}: '{field}' {message}", "第 {n} 轮：'{field}' {message}"),
    ("turn {n}: {message}", "第 {n} 轮：{message}"),
    ("holds a lone surrogate (a \\ud800-\\udfff escape), which is not text",
     "含有孤立的代理字符（\\ud800-\\udfff 转义），不是文本"),
    ("is missing", "缺失"),
    ("is empty", "为空"),
    ("must be text, got {kind}", "必须是文本，实际是 {kind}"),
    ("'{field}' must be a non-empty list of {{role, content}} messages", "'{field}' 必须是非空的 {{role, content}} 消息列表"),
    ("turn {n} of '{field}' must be {{role: system/user/assistant, content: text}}",
     "'{field}' 的第 {n} 轮必须是 {{role: system/user/assistant, content: text}}"),
    ("'{field}' must end with the assistant reply", "'{field}' 必须以 assistant 回复结尾"),
    ("'{field}' must be a transcript of '\\n\\nHuman: ...' and '\\n\\nAssistant: ...' turns",
     "'{field}' 必须是由 '\\n\\nHuman: ...' 和 '\\n\\nAssistant: ...' 轮次组成的对话记录"),
    ("'chosen' and 'rejected' are identical: there is nothing to prefer", "'chosen' 与 'rejected' 完全相同：无从偏好"),
    ("'chosen' and 'rejected' differ before their last reply: they must share the prompt",
     "'chosen' 与 'rejected' 在最后一条回复之前就不同：两者必须共用同一个提示"),
    ("the prompt must start with a user turn (after an optional system message) and end with one",
     "提示必须以 user 轮开始（前面可以有一条 system 消息），并以 user 轮结束"),
    ("the prompt is {tokens} tokens, over max_length={max_length}: nothing of the replies fits",
     "提示有 {tokens} 个 token，超过 max_length={max_length}：回复一点也放不下"),
    ("the model's chat template rejects this conversation: {detail}", "模型的对话模板拒绝了这段对话：{detail}"),
    ("the model's chat template alters assistant turn {n}, so it cannot be masked",
     "模型的对话模板会改写第 {n} 个 assistant 轮，因此无法为它做掩码"),
    ("'prompt' is empty or not text", "'prompt' 为空或不是文本"),
    ("no user turn before the last reply", "最后一条回复之前没有 user 轮"),
    # ---- refused files (data/formats.py, data/limits.py, data/readers.py, data/parquet.py) ----
    (JSON_SHAPE, "对象组成的 JSON 数组（[{{\"instruction\": ..., \"output\": ...}}, ...]）或 JSON Lines（每行一个对象）"),
    ("{file}: unsupported file type {suffix}. Upload one of: {types}.",
     "{file}：不支持的文件类型 {suffix}。请上传以下类型之一：{types}。"),
    ("{file} holds no rows. The file must be {shape}.", "{file} 中没有数据行。文件必须是{shape}。"),
    ("{file} holds no rows under its header. Add at least one training example.",
     "{file} 的表头下没有数据行。请至少加入一条训练样本。"),
    ("{file} holds no rows. Add at least one training example.", "{file} 中没有数据行。请至少加入一条训练样本。"),
    ("Unknown data format: found columns [{columns}]. Expected one of these column sets: {expected}.",
     "无法识别的数据格式：找到的列为 [{columns}]。应为以下列组合之一：{expected}。"),
    (("This file holds preference data (chosen and rejected replies), which sft does not train on: set method to "
      "dpo or orpo."), "该文件是偏好数据（chosen 和 rejected 回复），sft 不能用它训练：请把 method 设为 dpo 或 orpo。"),
    ("Preference data needs 'chosen' and 'rejected' columns; found [{columns}]. Expected one of: {expected}.",
     "偏好数据需要 'chosen' 和 'rejected' 列；找到的列为 [{columns}]。应为以下之一：{expected}。"),
    ("{file}: file not found", "{file}：找不到文件"),
    ("{file} is empty. Upload a file with at least one training row.", "{file} 是空文件。请上传至少含一行训练数据的文件。"),
    (SPLIT, "请把它拆成多个文件，或删掉一些行。"),
    ("{file} is {size}, over the {limit} limit. {advice}", "{file} 大小为 {size}，超过了 {limit} 的上限。{advice}"),
    ("{file} has {count} rows; at most {limit} rows are read. {advice}",
     "{file} 有 {count} 行；最多读取 {limit} 行。{advice}"),
    ("{file} has more than {limit} rows; at most {_limit} rows are read. {advice}",
     "{file} 超过 {limit} 行；最多读取 {limit} 行。{advice}"),
    ("{file}: {where} is over {size}; rows of at most {_size} are read. Shorten or split that row, or remove it.",
     "{file}：{where}超过 {size}；每行最多读取 {size}。请缩短或拆分该行，或把它删掉。"),
    ("the row starting on line {line}", "从第 {line} 行开始的那一行"),
    ("line {line}", "第 {line} 行"),
    (("{file} has {count} columns; at most {limit} are read. Keep only the columns of the training data (e.g. "
      "instruction, input, output or messages)."),
     "{file} 有 {count} 列；最多读取 {limit} 列。请只保留训练数据的列（例如 instruction、input、output 或 messages）。"),
    ("{file} decompresses to more than {size} of data; at most {_size} (the upload size limit) is read. {advice}",
     "{file} 解压后超过 {size}；最多读取 {size}（上传大小上限）。{advice}"),
    ("{file} could not be read as PARQUET: {detail}. Check the file is a valid {kind} file.",
     "{file} 无法按 PARQUET 读取：{detail}。请检查它是有效的 {kind} 文件。"),
    ("{file} is UTF-16 text. Save it as UTF-8 and upload it again.", "{file} 是 UTF-16 文本。请另存为 UTF-8 后重新上传。"),
    ("{file} looks like a binary file, not text. Upload a UTF-8 {suffix} text file (or a .parquet file).",
     "{file} 看起来是二进制文件，不是文本。请上传 UTF-8 编码的 {suffix} 文本文件（或 .parquet 文件）。"),
    ("{file} is not UTF-8 text (byte 0x{byte} on line {line}). Save it with UTF-8 encoding and upload it again.",
     "{file} 不是 UTF-8 文本（第 {line} 行的字节 0x{byte}）。请用 UTF-8 编码保存后重新上传。"),
    ("{file}: {where} is a JSON {kind}, not an object. The file must be {shape}.",
     "{file}：{where}是 JSON {kind}，不是对象。文件必须是{shape}。"),
    ("{file} is not valid JSON: {detail} at line {line}, column {column}. The file must be {shape}.",
     "{file} 不是有效的 JSON：第 {line} 行第 {column} 列处 {detail}。文件必须是{shape}。"),
    ("{file} is nested too deeply to be training data. The file must be {shape}.",
     "{file} 嵌套层级太深，不能作为训练数据。文件必须是{shape}。"),
    (("{file} holds a JSON object spread over several lines; JSON Lines needs one object per line, and a single "
      "JSON object is not a list of rows. The file must be {shape}."),
     "{file} 中有一个跨多行的 JSON 对象；JSON Lines 要求每行一个对象，而单个 JSON 对象也不是行的列表。文件必须是{shape}。"),
    ("item {n}", "第 {n} 项"),
    ("{file}: the CSV header repeats a column name ({columns}).", "{file}：CSV 表头中有重复的列名（{columns}）。"),
    (("{file} could not be read as CSV: Expected {expected} fields in line {line}, saw {seen}. Check the file is a "
      "valid .csv file."), "{file} 无法按 CSV 读取：第 {line} 行应有 {expected} 个字段，实际有 {seen} 个。请检查它是有效的 .csv 文件。"),
    ("{file} could not be read as CSV: {detail} (line {line}). Check the file is a valid .csv file.",
     "{file} 无法按 CSV 读取：{detail}（第 {line} 行）。请检查它是有效的 .csv 文件。"),
    (("{file}: a cell of the row starting on line {line} is over {limit} characters, the most a CSV cell may hold "
      "here. Shorten or split it, or upload the data as JSON Lines."),
     "{file}：从第 {line} 行开始的那一行中有单元格超过 {limit} 个字符，这是此处 CSV 单元格的上限。请缩短或拆分它，或改用 JSON Lines 上传数据。"),
    # ---- the model's tokenizer (data/tokenize.py) ----
    (("This model's tokenizer has no chat template, so conversations cannot be rendered the way the model expects. "
      "Fine-tune an instruct/chat model instead."),
     "该模型的分词器没有对话模板，无法按模型期望的方式渲染对话。请改为微调 instruct/chat 模型。"),
    (("This model's tokenizer cannot map tokens to text positions (it is not a fast `tokenizers` tokenizer), which "
      "masking the prompt needs. Pick a model that has one."),
     "该模型的分词器无法把 token 对应到文本位置（它不是 fast `tokenizers` 分词器），而遮蔽提示需要这一点。请选择带有这种分词器的模型。"),
    ("max_length must be at least 1, got {value}", "max_length 至少为 1，实际为 {value}"),
    # ---- Hub and ModelScope datasets (data/hub.py) ----
    ("{dataset} cannot be read from the Hub on this server; use another id or upload the data as a file.",
     "本服务器无法从 Hub 读取 {dataset}；请换一个 id，或把数据作为文件上传。"),
    ("ModelScope datasets are not available here (the app has no cache folder).", "此处无法使用 ModelScope 数据集（应用没有缓存目录）。"),
    (("Dataset {dataset} holds more than the {limit} MB limit for training data in data files; choose a smaller "
      "dataset or upload a file."), "数据集 {dataset} 的数据文件超过训练数据 {limit} MB 的上限；请选择更小的数据集，或上传文件。"),
    ("Dataset {dataset} has no JSON, JSONL, CSV or Parquet data files.", "数据集 {dataset} 中没有 JSON、JSONL、CSV 或 Parquet 数据文件。"),
    ("Dataset {dataset} could not be read ({detail}); check the id, configuration and split ({where}).",
     "无法读取数据集 {dataset}（{detail}）；请检查 id、配置和划分（{where}）。"),
    ("if it is private or gated, the server needs an HF_TOKEN that may read it",
     "若它是私有或受限的，服务器需要一个有权读取它的 HF_TOKEN"),
    ("Dataset {dataset} was not found on the Hugging Face Hub ({detail}); check the id.",
     "在 Hugging Face Hub 上找不到数据集 {dataset}（{detail}）；请检查 id。"),
    (("Dataset {dataset} could not be fetched: the Hugging Face Hub is not reachable from this server (offline). "
      "Upload the data as a file instead."), "无法获取数据集 {dataset}：本服务器连不上 Hugging Face Hub（离线）。请改为把数据作为文件上传。"),
    ("Dataset {dataset} has no split {split}[[ in configuration {config}]]; check dataset_config and dataset_split.",
     "数据集 {dataset} 没有划分 {split}[[（配置 {config}）]]；请检查 dataset_config 和 dataset_split。"),
    ("Dataset {dataset} (revision {revision}) has no data files for {config}, split {split}.",
     "数据集 {dataset}（版本 {revision}）中没有 {config}、划分 {split} 的数据文件。"),
    ("Dataset {dataset} has no rows.", "数据集 {dataset} 中没有数据行。"),
    (("Dataset {dataset}: its data files could not be read ({detail}); check they are valid JSON, CSV or Parquet of "
      "one layout."), "数据集 {dataset}：无法读取其数据文件（{detail}）；请检查它们是结构一致的有效 JSON、CSV 或 Parquet。"),
    (("Dataset {dataset} is larger than the {limit} MB limit for training data; choose a smaller split or "
      "configuration."), "数据集 {dataset} 超过训练数据 {limit} MB 的上限；请选择更小的划分或配置。"),
    ("dataset_config must be a configuration name (letters, digits, '_', '-', '.'), got {value}",
     "dataset_config 必须是配置名（字母、数字、'_'、'-'、'.'），实际为 {value}"),
    ("dataset_split must be a split name such as 'train', got {value}", "dataset_split 必须是划分名，例如 'train'，实际为 {value}"),
    ("dataset_revision must be a branch, tag or commit, got {value}", "dataset_revision 必须是分支、标签或提交，实际为 {value}"),
    (("dataset_id must be a Hub dataset id such as 'owner/name', owner included (a name alone, such as 'json', is a "
      "loader of files on this server, not a Hub dataset), or modelscope:owner/name for ModelScope; got {value}"),
     ("dataset_id 必须是包含所有者的 Hub 数据集 id，例如 'owner/name'（单独的名称如 'json' 是本服务器上的文件加载器，"
      "不是 Hub 数据集），ModelScope 数据集则写作 modelscope:owner/name；实际为 {value}")),
    # ---- a dataset for training, evaluation or comparison (service/actions.py, service/eval_data.py) ----
    ("Give either a dataset file or a Hub dataset id, not both.", "请提供数据集文件或 Hub 数据集 id 之一，不要同时提供。"),
    ("Upload a dataset file first (JSON, JSONL, CSV or Parquet), or name a Hub dataset.",
     "请先上传数据集文件（JSON、JSONL、CSV 或 Parquet），或填写 Hub 数据集。"),
    ("None of the {total} preference rows of {file} is usable.", "{file} 的 {total} 个偏好行中没有一行可用。"),
    (("None of the {total} rows of {file} has an assistant reply to evaluate on. Upload training data (Alpaca, chat "
      "messages or ShareGPT)."), "{file} 的 {total} 行中没有一行带有可供评估的 assistant 回复。请上传训练数据（Alpaca、对话消息或 ShareGPT）。"),
    ("None of the {total} rows of {file} holds a usable prompt; it needs {needs}.",
     "{file} 的 {total} 行中没有一行含可用的提示；需要 {needs}。"),
    ("{file} has columns [{columns}]; a prompts file needs {needs}.", "{file} 的列为 [{columns}]；提示文件需要 {needs}。"),
    (("Job {job} trained on {model}, but the loaded base model is {base}; start the app with --model {_model} to use "
      "its held-out split."), "任务 {job} 是在 {model} 上训练的，但当前加载的基础模型是 {base}；请用 --model {model} 启动应用，才能使用它留出的验证集。"),
    ("Job {job} held out no rows (eval_fraction 0); upload a file to use instead.",
     "任务 {job} 没有留出任何行（eval_fraction 为 0）；请改为上传文件。"),
    ("Job {job}'s copy of its data is gone (cleaned up); upload the file instead.",
     "任务 {job} 的数据副本已不存在（已被清理）；请改为上传文件。"),
]
