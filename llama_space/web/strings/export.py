"""The Export tab's text."""

STRINGS = {
    "ex.kind": ("Export as", "导出为"),
    "ex.kind.merge": ("Merged model (safetensors, for transformers / vLLM / TGI)",
                      "合并后的模型（safetensors，用于 transformers / vLLM / TGI）"),
    "ex.kind.gguf": ("GGUF + Ollama Modelfile (for llama.cpp / Ollama)", "GGUF + Ollama Modelfile（用于 llama.cpp / Ollama）"),
    "ex.kind.gguf_adapter": (("Adapter GGUF + base GGUF + Modelfile (llama.cpp --lora / Ollama ADAPTER; the base file "
                              "is reused)"),
                             "适配器 GGUF + 基础模型 GGUF + Modelfile（llama.cpp --lora / Ollama ADAPTER；基础模型文件会复用）"),
    "ex.quantization": ("GGUF quantization", "GGUF 量化"),
    "ex.quantization_info": (("Fewer bits: a smaller file and faster on CPU, slightly lower quality. q4_k_m is "
                             "Ollama's default; q8_0 is nearly lossless. For an adapter GGUF it is the base's (the "
                             "adapter itself stays F16)."),
                             ("位数越少：文件越小、CPU 上越快，质量略降。q4_k_m 是 Ollama 的默认值；q8_0 几乎无损。"
                              "导出适配器 GGUF 时，这是基础模型的量化（适配器本身保持 F16）。")),
    "ex.bits": ("{bits} bits", "{bits} 位"),
    "ex.bits_default": ("{bits} bits, Ollama's default", "{bits} 位，Ollama 默认"),
    "ex.start": ("Start export", "开始导出"),
    "ex.download": ("Download files", "下载文件"),
    "ex.files": ("Files of this export", "本次导出的文件"),
    "ex.needs": ("Needs: {needs}", "需要：{needs}"),
    "ex.needs_unknown": ("Choose an adapter to see the memory and disk the export needs.",
                         "选择一个适配器即可查看导出所需的内存和磁盘空间。"),
    "ex.none": ("No export yet: choose an adapter and start one.", "还没有导出：请选择一个适配器并开始导出。"),
    "ex.heading": ("Export {id} · {what} of {adapter} · {state}", "导出 {id} · {adapter} 的{what} · {state}"),
    "ex.what.merge": ("merged model", "合并模型"),
    "ex.what.gguf": ("GGUF", "GGUF"),
    "ex.what.gguf_adapter": ("adapter GGUF", "适配器 GGUF"),
    "ex.elapsed": ("Elapsed: {seconds} s", "已用时间：{seconds} 秒"),
    "ex.file_list": ("Files: {files}", "文件：{files}"),
    "ex.state.queued": ("queued", "排队中"),
    "ex.state.running": ("running", "运行中"),
    "ex.state.completed": ("completed", "已完成"),
    "ex.state.failed": ("failed", "失败"),
    "ex.state.cancelled": ("cancelled", "已取消"),
    "ex.state.interrupted": ("interrupted", "已中断"),
    "ex.push_what": ("Push", "推送内容"),
    "ex.push.export": ("This export", "本次导出"),
    "ex.push.adapter": ("The adapter", "适配器"),
    "ex.pushed": ("Pushed to {url}", "已推送到 {url}"),
}
