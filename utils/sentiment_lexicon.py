"""Chinese sentiment from a lexicon with negation, degree and contrast rules (offline, no model download).

A sentence is cut into clauses at punctuation and at contrast words (但是, 可是, 不过, 却 …; 可 not where it begins a
word: 可爱, 可怕; 就是 where a clause starts with it). In each clause the
longest lexicon words are found left to right; a word counts +1 (positive) or -1 (negative), times a degree
adverb just before it (很, 太, 非常, 好 … x1.5; 有点, 稍微 … x0.6) and flipped by a negator just before it, one
character before it (没睡好), or before a verb of opinion, a "so" or a 让我 (不觉得好吃, 没那么差, 没让我失望): 不, 没, 没有,
别, 无, 并不 …;
一点都不 …, so 不贵 counts positive, 一点也不新鲜 negative; two negators in a row cancel (没有不喜欢
counts positive). 好 before an adjective, a quantity or a lexicon word is "so" (好冷, 好多人, 好难吃), not "good".
Traditional characters are read as simplified.
The clause after a contrast word weighs double, a 虽然 clause half: 虽然贵，但是好吃 is positive. The sentence's
positivity is ``1 / (1 + exp(-score))``; a sentence with no lexicon word scores 0.5 (neutral: no opinion found).

The word lists are general everyday, review and news vocabulary; how they do on a held-out set the lists were not
tuned on: README, 情感识别 (tools/bench_sentiment.py).
"""

from __future__ import annotations

import math
import re

from utils.text import to_simplified

POSITIVE_WORDS = """
好 好吃 好看 好听 好用 好玩 好喝 好多了 好些了 好一点了 不错 棒 很棒 赞 点赞 满意 喜欢 爱 爱吃 开心 高兴 快乐 愉快 幸福 感动 感谢 谢谢 激动 欣慰
放心 安心 舒服 舒适 方便 便利 便宜 实惠 划算 值得 值 推荐 强烈推荐 干净 整洁 清新 美 美丽 漂亮 精彩 精美 精细 精致 优美
优秀 出色 专业 热情 热心 友好 耐心 贴心 周到 细心 仔细 认真 负责 及时 迅速 快 顺利 成功 赢 赢得 胜利 进步 提高 增长
改善 好转 恢复 健康 正常 安全 平安 稳 稳定 流畅 清晰 清楚 简洁 简单 实用 有用 有趣 有意思 有意义 有创意 有能力 新鲜
香 甜 地道 丰富 齐全 宽敞 明亮 安静 温柔 温馨 懂事 能干 信任 靠谱 惊喜 完美 一流 给力 省心 省钱 节省 耐用 结实 合适
解决 已解决 一点问题都没有 一点问题也没有 性价比很高 性价比挺高 性价比超高 性价比非常高
尽兴 收获 表扬 掌声 笑容 麻利 帮忙 帮了大忙 感激 照顾 人性化 物美价廉 没话说 没得说 值回票价 津津有味 井井有条 拾金不昧 获救 及格 通过 支持 期待
欢迎 喜爱 享受 轻松 自在 亲切 和蔼 大方 可爱 帅 酷 厉害 牛 良好 优质 高效 效率高 性价比高 物超所值 称赞 夸 好评
好转 痊愈 丰收 繁荣 发展 突破 创新 获奖 夺冠 冠军 团圆 感恩 温暖 舒心 开心果 松了一口气 满足 充实 精神 有精神
"""

NEGATIVE_WORDS = """
差 很差 太差 难吃 难看 难听 难用 难受 难过 难 失望 讨厌 糟糕 糟心 慢 脏 贵 坑 被坑 骗 被骗 骗人 垃圾 烂 破 碎 坏 坏了
后悔 生气 气人 气死 愤怒 失落 伤心 担心 害怕 烦 烦人 烦死 吵 噪音 冷漠 敷衍 不耐烦 麻烦 问题 故障 闪退 死机 卡顿 崩溃
延误 迟到 堵车 拥挤 挤 累 疼 痛 病 生病 失眠 受伤 事故 车祸 火灾 灾难 损失 淹 滑坡 中断 裁员 丢 漏水 发霉 霉味 臭
恶心 无聊 尴尬 乱七八糟 马马虎虎 作弊 处分 过期 掉色 变形 裂 裂缝 磨脚 危险 恶劣 骂 骂人 投诉 退货 不满 遗憾 可惜
失败 输 压力 加班 凉了 蔫 拖沓 一般 单调 复杂 不理想 打不通 绕路 弹窗 氪金 踢皮球 不守时 睡不着 没法用 不制冷 要命
喘不过气 发抖 乱收费 欺骗 虚假 假货 劣质 粗糙 难闻 吵闹 混乱 拥堵 污染 浪费 无语 郁闷 沮丧 痛苦 焦虑 紧张 委屈 心累
不爽 差劲 差评 糟透 倒霉 晦气 恐怖 可怕 吓人 悲伤 哭 抱怨 吐槽 坑人 宰客 忽悠 出错 错误 缺陷 漏洞 瑕疵 毛病 破损
弄丢 不道歉 迟迟 拖延 怠慢 无理 粗鲁 傲慢 冷淡 困难 艰难 贵了 涨价 下跌 亏损 倒闭 失业 贫困 暴跌 严重 惨 输得 病倒
跟不上 听不懂 看不懂 不理 没人管 没人修 没人理 不算话 不算数 不信 等了半天 半天也不 没效果 没有效果 效果都没有 放不下 没电 快没电 没油 快没油 快没时间 没信号 没网 卖完 卖光 售罄 没票
流感 感冒 发烧 咳嗽 解决不了 没法解决 无法解决 下降 退步 再也不来 再也不买 再也不去 不会再来 不会再买 性价比低 性价比不高
装不下 坐不下 枯燥 听不下去 白跑 用不了 打不开 连不上 吃不饱 不够 不行 不好 不值 白花钱 上当 受骗 扣钱 罚款 哪儿也去不了
"""

# Words that hold a sentiment character but say nothing about sentiment (快递, 出差, 好像): matched as words, so
# their characters do not count.
NEUTRAL_WORDS = """
快递 快餐 快要 快点 好像 好几 好久 只好 正好 刚好 恰好 爱好 出差 差不多 差点 病情 病人 病房 病历 美国 美元 美术 美容
香港 香蕉 方便面 安全带 问一下 问题是 没问题 难道 难怪 不好意思 好奇 坏处 好处 甜品 甜点 便宜点 特别 爱人 热水 冷水 贵姓
约好 说好 讲好 专业是 我的专业 什么专业 你好 您好 大家好 慢慢 一般来说 一般都 问题不大
快到 快下班 快来 快去 快走 快过年 快结束 快开始 不得不
"""

NEGATORS = ("一点都不", "一点也不", "根本不", "根本没", "并不", "并没有", "从不", "从没", "毫不", "绝不", "没有", "不是",
            "不太", "不怎么", "不够", "不", "没", "无", "别", "未")
# negative words that negate the lexicon word right after them instead (钱不够 negative, 不够新鲜 "not fresh enough")
_NEGATING_WORDS = frozenset({"不够"})
_NEGATORS_ONE_AWAY = tuple(n for n in NEGATORS if n not in ("无", "别", "未", "不是"))  # 没睡好, 不太懂: one verb between
DEGREE_UP = ("非常", "特别", "十分", "格外", "极其", "超级", "相当", "实在", "真是", "真的", "越来越", "太", "很", "超", "真",
             "挺", "极", "最", "更", "好")
DEGREE_DOWN = ("有点儿", "有点", "有些", "稍微", "略微", "略")
CONTRASTS = ("但是", "可是", "不过", "然而", "只是", "但", "却", "可")
# 可 begins words that are no contrast (可爱, 可怕, 可惜 …): 这只猫不可爱 was cut into 这只猫不 | 可爱 (positive)
_NOT_CONTRAST_AFTER_KE = "爱怕惜以靠口能笑怜观乐信行疑恶恨敬贵喜"
# a contrast only where a clause (at punctuation) starts with it: 好吃是好吃，就是太贵了 (就是 also means "just")
_CLAUSE_START_CONTRASTS = ("就是",)
CONCESSIVE = ("虽然", "尽管", "虽说", "虽")
_CLAUSE_BREAK = re.compile(r"[，,。.！!？?；;、\n]+")
_SENTENCE_END = re.compile(r"[。.！!？?\n]")  # a clause break that ends a sentence (and what 虽然 concedes)


def ends_clause(text: str) -> bool:
    """Whether ``text`` ends in a clause break (:data:`_CLAUSE_BREAK`)."""
    return bool(text) and _CLAUSE_BREAK.fullmatch(text[-1]) is not None
# a negator reaches past them (不觉得好, 没让我失望)
_NEGATION_BRIDGES = ("觉得", "认为", "感觉", "那么", "这么", "怎么", "让我", "让人", "让你", "令人", "使人")
# after 好 a quantity or an adjective outside the lexicon makes it a degree adverb, "so" (好冷, 好多人, 好久)
_GOOD_AS_DEGREE = "多少冷热大小久长远高低饿渴困忙晚早重轻近深浅"
_SCORE_LIMIT = 30.0  # a text's score is clipped here before the logistic (exp overflows past ±709)


def _word_set(block: str) -> frozenset[str]:
    return frozenset(block.split())


_POSITIVE = _word_set(POSITIVE_WORDS)
_NEGATIVE = _word_set(NEGATIVE_WORDS)
_NEUTRAL = _word_set(NEUTRAL_WORDS) - {"没问题"}
_LEXICON = _POSITIVE | _NEGATIVE | _NEUTRAL
_LONGEST = max(len(w) for w in _LEXICON)


def _clauses(text: str) -> list[tuple[str, float]]:
    """(clause, weight): the clause after a contrast word weighs 2; a concessive (虽然) clause 0.5, and where a contrast
    follows in the same sentence, the clauses between too: 虽然环境很好，服务很热情，但是菜有点难吃 concedes both (虽然很贵，
    我很喜欢, without a contrast, concedes its first clause only)."""
    pieces: list[tuple[str, str]] = []  # (piece, "contrast" / "concession" / "" / "end": a sentence ends after it)
    parts = _CLAUSE_BREAK.split(text)
    breaks = _CLAUSE_BREAK.findall(text)
    for i, part in enumerate(parts):
        at = _contrast_at(part)  # split "…，但是…" inside one punctuation clause too ("便宜却不好用")
        for piece in ([part[:at], part[at:]] if at is not None else [part] if part else []):
            contrast = next((w for w in CONTRASTS + _CLAUSE_START_CONTRASTS if piece.startswith(w)), None)
            if contrast is not None and (contrast != "可" or piece[1:2] not in _NOT_CONTRAST_AFTER_KE or
                                         not piece[1:2]):
                # the word itself is not read: the 不 of 不过 negated what followed it
                pieces.append((piece[len(contrast):], "contrast"))
            else:
                pieces.append((piece, "concession" if piece.startswith(CONCESSIVE) else ""))
        if i < len(breaks) and _SENTENCE_END.search(breaks[i]):
            pieces.append(("", "end"))
    ahead: list[str] = []  # the kind of the next marked piece after each piece (a contrast, a concession, an end)
    following = ""
    for _, kind in reversed(pieces):
        ahead.append(following)
        following = kind or following
    ahead.reverse()
    out: list[tuple[str, float]] = []
    behind = ""  # the kind of the last marked piece before
    for (piece, kind), after in zip(pieces, ahead, strict=True):
        if kind != "end":
            weight = {"contrast": 2.0, "concession": 0.5}.get(kind, 1.0)
            if not kind and behind == "concession" and after == "contrast":  # inside a concession a contrast answers
                weight = 0.5
            out.append((piece, weight))
        behind = kind or behind
    return out


def _contrast_at(part: str) -> int | None:
    """Where the first contrast word inside a clause (after its first character) begins, or None; a 可 that begins a
    word (可爱, 可怕) is none."""
    for word in CONTRASTS:
        at = part.find(word, 1)
        while at != -1 and (word == "可" and part[at + 1: at + 2] in _NOT_CONTRAST_AFTER_KE and part[at + 1: at + 2]
                            or _in_a_word(part, at)):
            at = part.find(word, at + 1)
        if at != -1:
            return at
    return None


def _in_a_word(part: str, at: int) -> bool:
    """Whether a lexicon word that starts before ``part[at]`` holds it (the 不过 of 喘不过气 is no contrast)."""
    return any(part[j: j + n] in _LEXICON for j in range(max(0, at - _LONGEST + 1), at)
               for n in range(at - j + 1, _LONGEST + 1))


def _modifier(clause: str, start: int, floor: int = 0) -> float:
    """Negation and degree of the words just before position ``start``: degree adverbs right before the word
    (很, 太 …; 有点 …), and before them a negator, directly, one character away (不很好, 没太懂) or before a verb of
    opinion or a "so" (不觉得好吃, 没那么差); none of them inside the lexicon word that ends at ``floor`` (the 不 of
    不错 negated the 可惜 of 东西不错可惜太贵)."""
    before = clause[max(floor, start - 8): start]
    factor = 1.0
    while True:  # peel degree adverbs off, so the 别 of 特别 is never taken for a negator
        degree = next((d for d in DEGREE_UP + DEGREE_DOWN if before.endswith(d)), None)
        if degree is None:
            break
        factor *= 0.6 if degree in DEGREE_DOWN else 1.5
        before = before[: -len(degree)]
    negator = next((n for n in NEGATORS if before.endswith(n)), None)
    if negator is not None:
        factor *= -0.8
        if before[: -len(negator)].endswith(NEGATORS):  # a double negative: 没有不喜欢, 不是不好 (it was negative)
            factor *= -1.0
    elif before[:-1].endswith(_NEGATORS_ONE_AWAY) and not before[:-1].endswith("不得不"):  # 不得不说真好吃
        factor *= -0.8
    else:  # 不觉得好吃, 没那么差: a negated verb of opinion or a "so" between (not 动不动就弹窗, 没几天就坏)
        bridge = next((b for b in _NEGATION_BRIDGES if before.endswith(b)), None)
        if bridge is not None and before[: -len(bridge)].endswith(NEGATORS):
            factor *= -0.8
    return factor


def _good_as_degree(clause: str, after: int) -> bool:
    """Whether the 好 before ``clause[after:]`` is the adverb "so": an adjective or a quantity follows (好冷, 好多),
    or a lexicon word (好难吃, 好开心)."""
    if after >= len(clause) or clause[after] in "不没":  # 好不好吃: a question, not "so bad"
        return False
    if clause[after] in _GOOD_AS_DEGREE:
        return True
    return _lexicon_word_at(clause, after)


def _lexicon_word_at(clause: str, at: int) -> bool:
    """Whether a positive or negative lexicon word starts at ``clause[at]``."""
    return any(clause[at: at + n] in _POSITIVE or clause[at: at + n] in _NEGATIVE for n in range(1, _LONGEST + 1))


def _word_at(clause: str, at: int) -> str | None:
    """The lexicon word (positive, negative or neutral) the scan picks at ``clause[at]``: the longest; None."""
    return next((clause[at: at + n] for n in range(_LONGEST, 0, -1) if clause[at: at + n] in _LEXICON), None)


def clause_score(clause: str) -> tuple[float, int]:
    """(sum of word polarities with their modifiers, number of lexicon words) of one clause."""
    score, hits, i, last_end = 0.0, 0, 0, 0
    while i < len(clause):
        for length in range(min(_LONGEST, len(clause) - i), 0, -1):
            word = clause[i: i + length]
            if word in _NEUTRAL and length > 1:
                i += length
                break
            polarity = 1.0 if word in _POSITIVE else -1.0 if word in _NEGATIVE else 0.0
            if word == "好" and _good_as_degree(clause, i + 1):
                polarity = 0.0  # 好冷, 好难吃: "so"; the word after it is scored with 好 as its degree adverb
            elif word in _NEGATING_WORDS and _word_at(clause, i + length) in _POSITIVE:
                polarity = 0.0  # 不够新鲜: the word after it is scored negated (not 人手不够累死了, 钱不够快递费)
            if polarity and not (length == 1 and word in NEGATORS):
                negator_inside = any(word.startswith(n) for n in NEGATORS) and length > 1
                if negator_inside:  # 不好, 没效果: negative already; a negator before it cancels (不是不好)
                    factor = -0.8 if clause[:i].endswith(NEGATORS) else 1.0
                else:
                    factor = _modifier(clause, i, last_end)
                score += polarity * factor
                hits += 1
                i += length
                last_end = i
                break
        else:
            i += 1
    return score, hits


def lexicon_positivity(text: str) -> float:
    """Positivity in [0, 1] of a Chinese text (0.5 when it holds no lexicon word)."""
    total, hits = 0.0, 0
    for clause, weight in _clauses(to_simplified(text)):  # 我很滿意 as 我很满意
        score, n = clause_score(clause)
        total += weight * score
        hits += n
    if hits == 0 or total == 0:
        return 0.5
    return 1.0 / (1.0 + math.exp(-max(-_SCORE_LIMIT, min(_SCORE_LIMIT, total))))  # 2400 characters of rant: -800
