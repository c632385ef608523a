"""Text shared by every tab: the tabs' names and the page's frame."""

STRINGS = {
    "tab.chat": ("Chat", "对话"),
    "tab.finetune": ("Fine-tune", "微调"),
    "tab.adapters": ("Adapters", "适配器"),
    "tab.compare": ("Compare", "对比"),
    "tab.export": ("Export", "导出"),
    "common.adapter": ("Adapter", "适配器"),
    "common.refresh": ("Refresh", "刷新"),
    "common.cancel": ("Cancel", "取消"),
    "common.stop": ("Stop", "停止"),
    "common.download": ("Download", "下载"),
    "common.private": ("Private", "私有"),
    "common.push": ("Push to Hub", "推送到 Hub"),
    "common.hub_repo": ("Hub repository (user/name)", "Hub 仓库（用户名/名称）"),
    "common.system_prompt": ("System prompt", "系统提示词"),
    "common.max_new_tokens": ("Max new tokens", "最多生成的 token 数"),
    "common.temperature": ("Temperature (0 = greedy)", "温度（0 = 贪心解码）"),
    "common.top_p": ("Top-p", "Top-p"),
    "common.disabled": ("Not available here: {why}", "此处不可用：{why}"),
    "common.server_failed": ("The server failed; the server log has the details. Try again in a moment.",
                             "服务器出错，详情见服务器日志。请稍后重试。"),
}
