"""Export's messages in Chinese (see web/core_messages.py for the template syntax): what an export needs, its
stages and how it ended, why an adapter or a model cannot be merged or converted, and pushing to the Hub."""

MERGED_INSTEAD = "export it as a merged GGUF instead (kind gguf)"
NEEDS = "About {memory} of memory and {disk} of disk ({size} parameters in {dtype}, {count} LoRA weights)."
NEEDS_ZH = "约需 {memory} 内存和 {disk} 磁盘（{size} 参数，{dtype}，{count} 个 LoRA 权重）。"
OTHER_BASE = "it was trained on another base; start the app with that base model to merge it."
OTHER_BASE_ZH = "它是在另一个基础模型上训练的；请用那个基础模型启动应用后再合并。"

MESSAGES = [
    # ---- what an export needs, its stages and its end (export/merge.py, export/export_jobs.py, export/process.py,
    # export/resources.py) ----
    (NEEDS, NEEDS_ZH),
    ("{needs} The base's {qtype} GGUF is cached already.", "{needs}基础模型的 {qtype} GGUF 已经缓存。"),
    ("{needs} The base's {qtype} GGUF is written once, then reused by its other adapters.",
     "{needs}基础模型的 {qtype} GGUF 只写一次，之后供它的其他适配器复用。"),
    (("{what} needs about {needed} of disk but only {free} is free there; delete old exports or other files and try "
      "again."), "{what}约需 {needed} 磁盘，但那里只剩 {free}；请删除旧的导出或其他文件后重试。"),
    (("{what} needs about {needed} of memory but only {free} is available; stop other work (a training job, the chat "
      "model on CPU) and try again."), "{what}约需 {needed} 内存，但只有 {free} 可用；请停止其他工作（训练任务、CPU 上的对话模型）后重试。"),
    (("Merging needs about {needed} of memory but only {free} is available; stop other work (a training job, the "
      "chat model on CPU) and try again."), "合并约需 {needed} 内存，但只有 {free} 可用；请停止其他工作（训练任务、CPU 上的对话模型）后重试。"),
    ("The adapter GGUF export", "适配器 GGUF 导出"),
    ("The merge", "合并"),
    ("The GGUF export", "GGUF 导出"),
    ("reading the base", "读取基础模型"),
    ("merging", "合并中"),
    ("writing GGUF", "写入 GGUF"),
    ("writing the base GGUF", "写入基础模型 GGUF"),
    ("writing the adapter GGUF", "写入适配器 GGUF"),
    ("packing the zip", "打包 zip"),
    ("done", "完成"),
    ("The export failed ({kind}); the export log ({file}) has the details.", "导出失败（{kind}）；详情见导出日志（{file}）。"),
    ("The export stopped before it finished (its process is gone); start it again.", "导出在完成前停止了（其进程已不存在）；请重新开始。"),
    ("The export process exited with code {code} before reporting why; the export log has the details.",
     "导出进程在报告原因之前就以代码 {code} 退出了；详情见导出日志。"),
    # ---- starting, cancelling, downloading (export/export_jobs.py, service/export_actions.py) ----
    (("Unknown export kind {kind}; choose merge (safetensors), gguf (the merged model) or gguf_adapter (the adapter "
      "beside its base)."), "未知的导出类型 {kind}；请选择 merge（safetensors）、gguf（合并后的模型）或 gguf_adapter（适配器与其基础模型并列）。"),
    ("Unknown GGUF quantization {qtype}; choose one of {names}.", "未知的 GGUF 量化方式 {qtype}；请从 {names} 中选择。"),
    ("Unknown GGUF type {qtype}; choose one of {names}.", "未知的 GGUF 类型 {qtype}；请从 {names} 中选择。"),
    ("Unknown adapter GGUF type {qtype}; choose one of {names}.", "未知的适配器 GGUF 类型 {qtype}；请从 {names} 中选择。"),
    ("An export is already running ({export}); wait for it to finish or cancel it.", "已有导出在运行（{export}）；请等它结束或取消它。"),
    ("Export {export} is already {state}; there is nothing to cancel.", "导出 {export} 已是“{state}”状态；没有可取消的内容。"),
    ("Export {export} is {state}; only a completed export can be downloaded.", "导出 {export} 的状态是“{state}”；只有已完成的导出才能下载。"),
    ("Export {export} is {state}; only a completed export can be pushed.", "导出 {export} 的状态是“{state}”；只有已完成的导出才能推送。"),
    ("Export {export} has no file {file}; its files are {files}.", "导出 {export} 中没有文件 {file}；它的文件有 {files}。"),
    ("The files of export {export} are gone; export again.", "导出 {export} 的文件已不存在；请重新导出。"),
    ("Choose an adapter to export (the base model has nothing to merge).", "请选择要导出的适配器（基础模型没有可合并的内容）。"),
    ("Choose a completed export to download.", "请选择一个已完成的导出来下载。"),
    ("Choose what to push: an adapter name or the id of a completed export.", "请选择要推送的内容：适配器名称或已完成导出的 id。"),
    (("An adapter GGUF export is not pushed as such: push the adapter itself (its name), or export the merged model "
      "as GGUF (kind gguf) and push that."), "适配器 GGUF 导出不能直接推送：请推送适配器本身（填它的名称），或把合并后的模型导出为 GGUF（kind gguf）再推送。"),
    (("Adapter {name} was trained on {model}, but the app runs {base}: start the app with --model {_model} to merge "
      "it."), "适配器 {name} 是在 {model} 上训练的，但应用运行的是 {base}：请用 --model {model} 启动应用后再合并。"),
    ("Export the GGUF file first; the Modelfile points at it (and at the adapter GGUF, if any).",
     "请先导出 GGUF 文件；Modelfile 指向它（如有适配器 GGUF，也指向它）。"),
    # ---- merging (export/merge.py, export/lora_weights.py) ----
    (("The base model's checkpoint is quantized; an adapter merges only into the unquantized base (an adapter "
      "trained on an NF4 base too): point the model setting at the full-precision checkpoint."),
     "基础模型的检查点是量化的；适配器只能合并进未量化的基础模型（在 NF4 基础模型上训练的适配器也一样）：请把模型设置指向全精度检查点。"),
    (("The base model has no safetensors weights to merge into (a .bin checkpoint cannot be streamed safely): use a "
      "model published as safetensors."), "基础模型没有可供合并的 safetensors 权重（.bin 检查点无法安全地流式读取）：请使用以 safetensors 发布的模型。"),
    ("The adapter changes {weight}, which the base model does not have: " + OTHER_BASE,
     "适配器修改了 {weight}，而基础模型中没有它：" + OTHER_BASE_ZH),
    ("The adapter's {weight} is {rows}x{columns} but the base's is {base_rows}x{base_columns}: " + OTHER_BASE,
     "适配器的 {weight} 是 {rows}x{columns}，而基础模型的是 {base_rows}x{base_columns}：" + OTHER_BASE_ZH),
    ("{folder} exists already; remove it or choose another folder.", "{folder} 已存在；请删除它或另选一个目录。"),
    ("The base stores a LoRA-targeted weight as {dtype}; only float weights merge.", "基础模型把 LoRA 目标权重存为 {dtype}；只有浮点权重能合并。"),
    ("A base model shard ended early; the checkpoint is damaged: download it again.", "基础模型的一个分片提前结束了；检查点已损坏：请重新下载。"),
    ("The base's {weight} has an unexpected size on disk; the checkpoint is damaged.", "基础模型的 {weight} 在磁盘上的大小不对；检查点已损坏。"),
    ("This adapter uses {what}, which merging here does not support.", "该适配器使用了 {what}，此处的合并不支持它。"),
    ("This adapter also trains whole modules (modules_to_save); merging here supports LoRA weights only.",
     "该适配器还训练了整个模块（modules_to_save）；此处的合并只支持 LoRA 权重。"),
    (("The adapter holds tensors other than LoRA A/B weights (e.g. {names}); merging here supports plain LoRA "
      "adapters only."), "适配器中有 LoRA A/B 权重以外的张量（例如 {names}）；此处的合并只支持普通 LoRA 适配器。"),
    ("The adapter's weights are incomplete ({weight} has no lora_B); train it again.", "适配器的权重不完整（{weight} 没有 lora_B）；请重新训练。"),
    ("The adapter holds no LoRA weights; there is nothing to merge.", "适配器中没有 LoRA 权重；没有可合并的内容。"),
    ("{file} is missing from {folder}; it is not a complete model or adapter folder.", "{folder} 中缺少 {file}；它不是完整的模型或适配器目录。"),
    ("{file} in {folder} is not valid JSON.", "{folder} 中的 {file} 不是有效的 JSON。"),
    ("LoRA bias terms", "LoRA 偏置项"),
    ("LoRA bias", "LoRA 偏置"),
    ("whole trained modules (modules_to_save)", "整个训练过的模块（modules_to_save）"),
    # ---- GGUF (export/gguf.py, export/gguf_vocab.py, export/gguf_adapter.py) ----
    ("Writing {file} failed ({detail}); free disk space and export again.", "写入 {file} 失败（{detail}）；请释放磁盘空间后重新导出。"),
    ("The model folder has no config.json; export a merged model folder.", "模型目录中没有 config.json；请导出合并后的模型目录。"),
    ("The model folder's config.json could not be read as a transformers config.", "模型目录中的 config.json 无法按 transformers 配置读取。"),
    ("GGUF export supports Llama-architecture models (Llama 3.x, SmolLM2); this model is {kind}.",
     "GGUF 导出支持 Llama 架构的模型（Llama 3.x、SmolLM2）；这个模型是 {kind}。"),
    ("GGUF export supports Llama models without bias terms; this one has attention or MLP biases.",
     "GGUF 导出支持不带偏置项的 Llama 模型；这个模型的注意力层或 MLP 有偏置。"),
    ("The model folder has no .safetensors weights; merge the adapter into a folder first.", "模型目录中没有 .safetensors 权重；请先把适配器合并到一个目录。"),
    ("GGUF export reads float32, float16 and bfloat16 weights; {weight} is {dtype}.",
     "GGUF 导出读取 float32、float16 和 bfloat16 权重；{weight} 是 {dtype}。"),
    ("The config says the output layer is not tied to the embeddings, but the checkpoint has no lm_head.weight.",
     "配置说明输出层与嵌入层不共享权重，但检查点中没有 lm_head.weight。"),
    (("The checkpoint holds a tensor a Llama GGUF has no place for ({weight}); export a merged model, not an adapter "
      "folder."), "检查点中有一个 Llama GGUF 放不下的张量（{weight}）；请导出合并后的模型，而不是适配器目录。"),
    ("GGUF export supports the default and Llama 3 rope scaling; this model uses {kind}.",
     "GGUF 导出支持默认和 Llama 3 的 rope 缩放；这个模型用的是 {kind}。"),
    (("The model folder has no tokenizer that loads; save the tokenizer with the model (tokenizer.json and "
      "tokenizer_config.json) and export again."), "模型目录中没有能加载的分词器；请把分词器（tokenizer.json 和 tokenizer_config.json）与模型一起保存后重新导出。"),
    ("GGUF export needs a fast tokenizer (tokenizer.json) in the model folder.", "GGUF 导出需要模型目录中有 fast 分词器（tokenizer.json）。"),
    (("The tokenizer has {tokens} tokens but the model's embedding only {rows} rows; resize the embeddings before "
      "exporting."), "分词器有 {tokens} 个 token，但模型的嵌入层只有 {rows} 行；请在导出前调整嵌入层大小。"),
    (("GGUF export supports byte-level BPE tokenizers (Llama 3.x, SmolLM2); this model's tokenizer is a different "
      "kind."), "GGUF 导出支持字节级 BPE 分词器（Llama 3.x、SmolLM2）；这个模型的分词器是另一种。"),
    ("The tokenizer has no BPE merges; GGUF export needs tokenizer.json with its merges.",
     "分词器没有 BPE 合并规则；GGUF 导出需要带合并规则的 tokenizer.json。"),
    (("GGUF export supports the Llama 3.x and SmolLM2 tokenizers; this tokenizer splits text differently ({kind}), "
      "so llama.cpp would tokenize it wrongly."), "GGUF 导出支持 Llama 3.x 和 SmolLM2 的分词器；这个分词器切分文本的方式不同（{kind}），llama.cpp 会把它切错。"),
    ("The model folder has no tokenizer that loads; the Modelfile needs its chat template.",
     "模型目录中没有能加载的分词器；Modelfile 需要它的对话模板。"),
    ("This adapter uses {what}, which a llama.cpp LoRA adapter cannot carry; {fix} to export it as an adapter GGUF.",
     "该适配器使用了 {what}，llama.cpp 的 LoRA 适配器无法承载；要导出为适配器 GGUF，请{fix}。"),
    ("train it with DoRA off", "关闭 DoRA 重新训练"),
    ("train it without LoRA bias", "不带 LoRA 偏置重新训练"),
    ("train LoRA weights only", "只训练 LoRA 权重"),
    (("This adapter trains the token embeddings (embed_tokens), which the adapter GGUF export does not write; train "
      "it without embed_tokens in its target modules."), "该适配器训练了词嵌入（embed_tokens），适配器 GGUF 导出不会写入它；请训练时不要把 embed_tokens 放进目标模块。"),
    ("The adapter stores {weight} transposed (fan_in_fan_out), which llama.cpp does not apply; " + MERGED_INSTEAD + ".",
     "适配器以转置方式存储 {weight}（fan_in_fan_out），llama.cpp 不会应用它；请改为导出合并后的 GGUF（kind gguf）。"),
    ("This adapter trains the output head, which this base ties to its embeddings: its GGUF has no output tensor for "
     "llama.cpp to apply it to; " + MERGED_INSTEAD + ".",
     "该适配器训练了输出头，而这个基础模型的输出头与嵌入层共享权重：它的 GGUF 中没有可供 llama.cpp 应用的输出张量；请改为导出合并后的 GGUF（kind gguf）。"),
    ("The adapter changes {weight}, which has no place in a Llama GGUF; " + MERGED_INSTEAD + ".",
     "适配器修改了 {weight}，而 Llama GGUF 中没有它的位置；请改为导出合并后的 GGUF（kind gguf）。"),
    # ---- pushing to the Hub (export/publish.py) ----
    (("Pushing to the Hub needs a token with write access: create one at https://huggingface.co/settings/tokens and "
      "set HF_TOKEN before starting the app."), "推送到 Hub 需要有写权限的令牌：请在 https://huggingface.co/settings/tokens 创建一个，并在启动应用前设置 HF_TOKEN。"),
    ("The Hub is switched off here (HF_HUB_OFFLINE=1); unset it to push, or download the files instead.",
     "此处已关闭 Hub（HF_HUB_OFFLINE=1）；请取消该设置后推送，或改为下载文件。"),
    ("{repo} is not a Hub repository id; write it as your-name/model-name.", "{repo} 不是 Hub 仓库 id；请写成 your-name/model-name。"),
    ("Could not push {name} to {repo}: {reason}.", "无法把 {name} 推送到 {repo}：{reason}。"),
    ("the token was refused; set HF_TOKEN to a valid token", "令牌被拒绝；请把 HF_TOKEN 设为有效的令牌"),
    (("the token may not write there (it needs write access, and the namespace must be yours or your "
      "organization's)"), "该令牌无权写入那里（需要写权限，且命名空间必须属于你或你的组织）"),
    ("the Hub has no such namespace", "Hub 上没有这个命名空间"),
    ("the Hub reported a conflict; retry", "Hub 报告了冲突；请重试"),
    ("the Hub is rate-limiting; retry in a while", "Hub 正在限流；请过一会儿重试"),
    ("the Hub answered HTTP {status}", "Hub 返回了 HTTP {status}"),
    ("{detail} (check the network connection)", "{detail}（请检查网络连接）"),
    ("{kind} (check the network connection and the repository id)", "{kind}（请检查网络连接和仓库 id）"),
    ("There is nothing to push in this {kind} (its files are gone); export it again.", "这个{kind}中没有可推送的内容（文件已不存在）；请重新导出。"),
    ("Unknown kind {kind}; push an adapter, a merged model or a GGUF export.", "未知的类型 {kind}；请推送适配器、合并后的模型或 GGUF 导出。"),
]
