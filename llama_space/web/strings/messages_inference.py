"""Chat's messages in Chinese (see web/core_messages.py for the template syntax): the model and its adapters,
prompts, sampling settings, the queue, the remote chat backend and the base model's download."""

KV_FIT = "{tokens} tokens of KV cache fit in {memory} of the {free} GiB free after loading ({per_token} KiB a token)"
KV_FIT_ZH = "加载后空闲的 {free} GiB 中，{memory} 只能容纳 {tokens} 个 token 的 KV 缓存（每个 token {per_token} KiB）"
CHECK_API = "check LLAMA_SPACE_BACKEND_URL points at its /v1 API."
CHECK_API_ZH = "请检查 LLAMA_SPACE_BACKEND_URL 是否指向它的 /v1 API。"

MESSAGES = [
    # ---- the prompt and the reply (inference/prompting.py, inference/manager.py, inference/sampling.py) ----
    ("The message is empty: type something to send.", "消息为空：请输入内容再发送。"),
    (("The message is too long: the prompt needs {needed} tokens but only {fit} fit (context window {window} minus "
      "max_new_tokens {max_new_tokens}). Shorten the message, the system prompt or max_new_tokens."),
     ("消息太长：提示需要 {needed} 个 token，但只能放下 {fit} 个（上下文窗口 {window} 减去 max_new_tokens {max_new_tokens}）。"
      "请缩短消息、系统提示词或 max_new_tokens。")),
    ("The conversation must end with a user message (or, after tool calls, tool results).",
     "对话必须以用户消息结尾（或在工具调用之后以工具结果结尾）。"),
    ("The model's chat template refused this conversation: {detail}", "模型的对话模板拒绝了这段对话：{detail}"),
    ("max_new_tokens ({value}) must be smaller than the model's context window ({window} tokens).",
     "max_new_tokens（{value}）必须小于模型的上下文窗口（{window} 个 token）。"),
    ("max_new_tokens must be at most {limit}", "max_new_tokens 最多为 {limit}"),
    ("The model is still loading; try again in a moment.", "模型仍在加载中，请稍后重试。"),
    ("The model is still loading; start the training job in a moment.", "模型仍在加载中，请稍后再开始训练任务。"),
    (("The model produced invalid probabilities (NaN/inf) for this request; try other sampling settings (a lower "
      "temperature, top_p or repetition_penalty) or another adapter."),
     "模型为这个请求产生了无效的概率（NaN/inf）；请换一组采样设置（更低的温度、top_p 或 repetition_penalty）或换一个适配器。"),
    ("top_p must be greater than 0 (use temperature 0 for greedy decoding)", "top_p 必须大于 0（贪心解码请把温度设为 0）"),
    ("{name} must be between {low} and {high}, got {value}", "{name} 必须在 {low} 到 {high} 之间，实际为 {value}"),
    ("{name} must be a whole number from {low} to {high}, got {value}", "{name} 必须是 {low} 到 {high} 之间的整数，实际为 {value}"),
    ("{name} must be a whole number of at least {low}, got {value}", "{name} 必须是不小于 {low} 的整数，实际为 {value}"),
    # ---- the queue and the memory for replies (inference/admission.py) ----
    ("The server is busy ({count} requests in progress or waiting); try again in a moment.",
     "服务器繁忙（{count} 个请求正在处理或排队）；请稍后重试。"),
    (("This request needs KV cache for {needed} tokens (prompt plus max_new_tokens), but only {fit} fit in the "
      "memory {where}: lower max_new_tokens or shorten the conversation, or wait for the job to finish."),
     ("这个请求需要 {needed} 个 token 的 KV 缓存（提示加 max_new_tokens），但{where}的内存只能容纳 {fit} 个：请降低 max_new_tokens"
      "或缩短对话，或等待任务完成。")),
    (("This request needs KV cache for {needed} tokens (prompt plus max_new_tokens), but only {fit} fit in the "
      "memory {where}: lower max_new_tokens or shorten the conversation."),
     ("这个请求需要 {needed} 个 token 的 KV 缓存（提示加 max_new_tokens），但{where}的内存只能容纳 {fit} 个：请降低 max_new_tokens"
      "或缩短对话。")),
    (("The server is busy: the memory {where} is taken by other replies ({used} of {total} tokens); try again in a "
      "moment."), "服务器繁忙：{where}的内存已被其他回复占用（{total} 个 token 中的 {used} 个）；请稍后重试。"),
    ("beside the training job", "训练任务之外"),
    ("for chat on this server", "本服务器用于对话"),
    # ---- adapters (adapters.py, inference/manager.py, inference/batching.py) ----
    ("Unknown adapter {name}. Available: base, none yet.", "未知的适配器 {name}。可用：base，暂无其他。"),
    ("Unknown adapter {name}. Available: base, {names}.", "未知的适配器 {name}。可用：base、{names}。"),
    (("Adapter {name} was trained on {model}, but the loaded base model is {base}; start the app with --model "
      "{_model} to use it."), "适配器 {name} 是在 {model} 上训练的，但当前加载的基础模型是 {base}；请用 --model {model} 启动应用后再使用它。"),
    ("Adapter {name} could not be loaded on {device} ({kind}); the server log has the details.",
     "无法在 {device} 上加载适配器 {name}（{kind}）；详情见服务器日志。"),
    (("Adapter {name} could not be loaded: not enough memory. Unload or delete other adapters, or restart the app "
      "with a smaller max_new_tokens or concurrency."),
     "无法加载适配器 {name}：内存不足。请卸载或删除其他适配器，或用更小的 max_new_tokens 或并发数重启应用。"),
    (("Adapter {name} does not fit {model}: its weight shapes differ from the base model's, so it was trained on "
      "another base model. Start the app with that model, or train it again here."),
     "适配器 {name} 与 {model} 不匹配：它的权重形状与基础模型不同，说明它是在另一个基础模型上训练的。请用那个模型启动应用，或在这里重新训练。"),
    (("Adapter {name} is damaged: its files cannot be read (cut short or corrupt). Delete it and train or upload it "
      "again."), "适配器 {name} 已损坏：其文件无法读取（不完整或已损坏）。请删除它，然后重新训练或上传。"),
    ("Adapter {name} was unloaded or deleted while replying; choose another adapter and ask again.",
     "回复过程中适配器 {name} 被卸载或删除了；请选择其他适配器后再问一次。"),
    (("Invalid adapter name {name}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (no "
      "path separators, not 'base')"),
     "无效的适配器名称 {name}：请使用 1-64 个字母、数字、'.'、'_' 或 '-'，以字母或数字开头（不能含路径分隔符，也不能是 'base'）"),
    ("adapter {name} was not saved completely (missing {files})", "适配器 {name} 没有完整保存（缺少 {files}）"),
    ("Adapter {name} exists; choose another name or delete it.", "适配器 {name} 已存在；请换一个名称或先删除它。"),
    ("There is no adapter named {name}.", "没有名为 {name} 的适配器。"),
    (("Adapter {name} is a link to a folder elsewhere on the server, which the app neither deletes, zips nor pushes: "
      "remove the link adapters/{_name} on the server (the folder it points at stays), or replace it with a copy of "
      "that folder."),
     ("适配器 {name} 是指向服务器上其他位置文件夹的链接，应用不会删除、打包或推送它：请在服务器上删除链接 adapters/{name}"
      "（它指向的文件夹会保留），或用该文件夹的副本替换它。")),
    (("Adapter {name} holds links ({links}), which downloads and pushes never follow: replace them in adapters/{_name} "
      "with the files themselves."), "适配器 {name} 中含有链接（{links}），下载和推送都不会跟随链接：请在 adapters/{name} 中用文件本身替换它们。"),
    (("Adapter {name} was trained on {model}, not on {base}: a job can only continue an adapter of the model this "
      "app serves."), "适配器 {name} 是在 {model} 上训练的，不是 {base}：任务只能继续训练本应用所服务模型的适配器。"),
    # ---- the remote chat backend (inference/remote.py, inference/remote_wire.py) ----
    ("The chat backend at {url} is unreachable ({why}); check that it runs and LLAMA_SPACE_BACKEND_URL.",
     "无法连接 {url} 的对话后端（{why}）；请检查它是否在运行，以及 LLAMA_SPACE_BACKEND_URL。"),
    ("it did not answer in time", "它没有及时应答"),
    ("nothing accepted the connection", "没有服务接受连接"),
    ("the connection failed", "连接失败"),
    ("The chat backend at {url} stopped answering mid-reply; try again in a moment.", "{url} 的对话后端在回复中途停止了应答；请稍后重试。"),
    ("The chat backend at {url} answered something that is not JSON ({kind}); " + CHECK_API,
     "{url} 的对话后端返回的不是 JSON（{kind}）；" + CHECK_API_ZH),
    ("The chat backend at {url} answered HTTP {status} with something that is not JSON ({kind}): it may be down "
     "behind a proxy, or " + CHECK_API,
     "{url} 的对话后端返回了 HTTP {status}，内容不是 JSON（{kind}）：它可能在代理后面已停止运行，或" + CHECK_API_ZH),
    ("no content type", "没有内容类型"),
    ("The chat backend at {url} answered one JSON object, not the event stream asked for; " + CHECK_API,
     "{url} 的对话后端返回了单个 JSON 对象，而不是所请求的事件流；" + CHECK_API_ZH),
    ("The chat backend at {url} sent a stream chunk that is not chat-completion JSON; " + CHECK_API,
     "{url} 的对话后端发送的流数据块不是 chat-completion JSON；" + CHECK_API_ZH),
    ("The chat backend at {url} lists no models; " + CHECK_API, "{url} 的对话后端没有列出任何模型；" + CHECK_API_ZH),
    ("The chat backend at {url} is busy; try again in a moment.", "{url} 的对话后端繁忙；请稍后重试。"),
    (("The chat backend at {url} refused this app's key (HTTP {status}: {detail}); check "
      "LLAMA_SPACE_BACKEND_API_KEY."), "{url} 的对话后端拒绝了本应用的密钥（HTTP {status}：{detail}）；请检查 LLAMA_SPACE_BACKEND_API_KEY。"),
    ("The chat backend at {url} failed (HTTP {status}): {detail}", "{url} 的对话后端出错（HTTP {status}）：{detail}"),
    ("The chat backend at {url} failed while streaming: {detail}", "{url} 的对话后端在流式输出时出错：{detail}"),
    ("no reason given", "未给出原因"),
    ("The chat backend at {url} failed: {detail}", "{url} 的对话后端出错：{detail}"),
    ("The chat backend at {url} does not serve {model}; it serves: {models}.", "{url} 的对话后端不提供 {model}；它提供：{models}。"),
    ("Unknown adapter {name}. Available at {url}: base, {names} (vLLM: add it with --lora-modules NAME=PATH).",
     "未知的适配器 {name}。{url} 上可用：base、{names}（vLLM：用 --lora-modules NAME=PATH 添加）。"),
    (("The chat backend is remote and no tokenizer for its base model is on this machine; start the app with "
      "--model set to the backend's base model (Hub id or path)."),
     "对话后端在远程，而本机没有其基础模型的分词器；请启动应用时把 --model 设为后端的基础模型（Hub id 或路径）。"),
    # ---- the base model (model/loading.py, model/source.py, model/modelscope.py, inference/zerogpu.py) ----
    ("{model} has no chat template; choose an instruct/chat model", "{model} 没有对话模板；请选择 instruct/chat 模型"),
    ("Could not load model {model}: {advice}. ({kind}: {detail})", "无法加载模型 {model}：{advice}。（{kind}：{detail}）"),
    ("check the id or path", "请检查 id 或路径"),
    ("accept the model's licence on huggingface.co and set HF_TOKEN", "请在 huggingface.co 上接受该模型的许可协议并设置 HF_TOKEN"),
    (("The base model {model} is not downloaded on this machine; load it once for chat (or run `hf download "
      "{_model}`) and export again."), "基础模型 {model} 尚未下载到本机；请先加载它用于对话一次（或运行 `hf download {model}`），然后重新导出。"),
    (("The base model {model} is not downloaded on this machine; start the app once with --model {_model} (which "
      "downloads it) and try again."), "基础模型 {model} 尚未下载到本机；请先用 --model {model} 启动一次应用（会下载它），然后重试。"),
    ("Could not download the base model {model} ({detail}); check the network and HF_TOKEN.",
     "无法下载基础模型 {model}（{detail}）；请检查网络和 HF_TOKEN。"),
    (("ModelScope model {model} has no config.json with safetensors weights; Llama Space loads safetensors "
      "checkpoints."), "ModelScope 模型 {model} 没有带 safetensors 权重的 config.json；Llama Space 只加载 safetensors 检查点。"),
    ("ModelScope could not serve the {kind} modelscope:{repo} right now ({detail}); try again later.",
     "ModelScope 暂时无法提供 {kind} modelscope:{repo}（{detail}）；请稍后重试。"),
    ("The {kind} modelscope:{repo} could not be downloaded from ModelScope ({detail}); try again.",
     "无法从 ModelScope 下载 {kind} modelscope:{repo}（{detail}）；请重试。"),
    (("Training needs a GPU of its own, and this Space runs on ZeroGPU, which lends a GPU for seconds per request. "
      "In the Space's Settings > Hardware pick a dedicated GPU (an L4 or A10G with 24 GB trains Llama-3.1-8B with "
      "LoRA beside chat, or with QLoRA), or train on your own machine and upload the adapter."),
     ("训练需要独占一块 GPU，而这个 Space 运行在 ZeroGPU 上，每个请求只借用 GPU 几秒钟。请在 Space 的 Settings > Hardware "
      "中选择专用 GPU（24 GB 的 L4 或 A10G 可以在对话的同时用 LoRA 或 QLoRA 训练 Llama-3.1-8B），或在自己的机器上训练后上传适配器。")),
    ("The model leaves too little memory for chat: only " + KV_FIT + ". Free memory on the device, or use a smaller "
                                                                     "model or dtype.", "模型留给对话的内存太少：" + KV_FIT_ZH + "。请释放设备内存，或使用更小的模型或数据类型。"),
]
