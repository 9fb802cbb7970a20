"""The messenger adapters' own words: button labels, card field names, hints (DingTalk and WeCom use
them, Chinese by default: `dingtalk.locale`, `wecom.locale`); the core's sentences are translated by the
core's own layer (bot.i18n), not here. In bot/ because adapters must not import each other."""

from __future__ import annotations

ZH_CN = {
    "Approve": "批准",
    "Reject": "拒绝",
    "Requested by": "申请人",
    "Audience": "收件人",
    "Subject": "主题",
    "Sample": "样例",
    "Checks": "检查",
    "Sender": "发件人",
    "Template": "模板",
    "Progress": "进度",
    "Outcome": "结果",
    "Preview": "预览",
    "Submitted": "已提交",
    "Decided": "已处理",
    "Postroom": "Postroom 邮件助手",
    "or type": "或输入",
}


def t(locale: str, text: str) -> str:
    """`text` in `locale`; a field name with a detail in brackets keeps the detail ("Sample (a@b)")."""
    if locale != "zh_CN":
        return text
    if text in ZH_CN:
        return ZH_CN[text]
    head, sep, rest = text.partition(" (")
    if sep and head in ZH_CN:
        return f"{ZH_CN[head]}（{rest.rstrip(')')}）"
    return text
