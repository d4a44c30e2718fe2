"""Arabic numbers in Chinese text spelled as Mandarin reads them, for scoring.

Chinese references (AISHELL and most corpora) write numbers in characters (二十五度, 二零一九年, 百分之五十) while
Whisper, and many fine-tuned models, write digits (25度, 2019年, 50%): each such number counted as errors although
the words are the same. Scoring spells the digits of both texts out, so "二十五度" and "25度" are one text:

* an amount: 25 → 二十五, 10 → 十, 105000 → 十万五千, 1005 → 一千零五, 1,000 → 一千, -5 → 负五, 3.14 → 三点一四;
  a lone 2 before a measure word is 两 (2个 → 两个, 2点 → 两点, but 第2个, 2月, 2年级 keep 二);
* digit by digit: a year (2019年, 2019-2020年, 98年3月), a number with a leading zero (007), a mobile or identity
  number, one of 7-10 digits with no unit after it, groups joined by "-" or spaces (400-123-4567, 138 1234 5678), one
  after a word that names a number to dial or look up (拨打12306, 房间302, 航班CA1234), 3 digits or more right after
  a Latin letter (A380), dotted runs (192.168.1.1 → 一九二点一六八点一点一);
* 50% → 百分之五十, 100% → 百分之百, -3% → 负百分之三, 3‰ → 千分之三, 3/4 → 四分之三, 25℃ / 25°C → 二十五度,
  -5度 → 零下五度, $5 → 五美元, ¥5 → 五元, 2020-03-05 → 二零二零年三月五日;
* between two numbers: 3-5, 3~5 → 三到五 (a range rises; two neighbouring digits are said together, an approximate
  number before a word: 1-2线 → 一二线, 2-3天 → 两三天, 1-2天 → 一两天), 3-1, 3-0, 3:2 → 三比一, 三比零, 三比二 (a score),
  10:30 → 十点三十分 (as AISHELL writes a time), 9:00-17:00 → 九点到十七点.

Both texts are also brought to one spelling where Mandarin has two for the same number: 〇 (and ○ ◯ between
numerals) → 零, 幺 between numerals → 一, 两 before 百/千/万/亿 → 二 (两千 and 二千, 2000), 百分之一百 → 百分之百,
摄氏度 after a number → 度 (Whisper writes 25℃ where AISHELL writes 二十五度; news also says 二十五摄氏度).
Expects simplified characters and ASCII digits (NFKC: full-width digits, ％, ＄ folded).
"""

from __future__ import annotations

import re

DIGITS = "零一二三四五六七八九"
_SMALL_UNITS = ("", "十", "百", "千")
_LARGE_UNITS = ("", "万", "亿", "万亿")  # every four digits
NUMERALS = "零〇○◯一幺二两三四五六七八九十百千万亿"

# measure words after which a lone 2 is 两 ("两个人", "两点", "两年"), not 二 ("二月", "二号", "第二")
_LIANG_BEFORE = ("个", "位", "名", "人", "只", "条", "件", "张", "本", "次", "遍", "天", "周", "年", "岁", "倍",
                 "层", "种", "类", "点", "家", "辆", "台", "部", "元", "块", "毛", "斤", "公斤", "千克", "克", "吨",
                 "米", "公里", "里", "分钟", "小时", "秒", "页", "杯", "碗", "双", "对", "份", "套", "间", "座", "所",
                 "场", "项", "起", "国", "岸", "队", "架", "艘", "支", "届", "轮", "成", "分", "段", "批", "股", "百",
                 "千", "万", "亿")
_NOT_LIANG = re.compile(r"年级|点\s*[0-9零一二三四五六七八九]+(?![0-9零一二三四五六七八九]|\s*分)")  # 二年级, 2点5亿

# a word before a number that is dialled, typed or looked up (read digit by digit: 拨打幺二三零六, 房间三零二)
_DIALLED = re.compile(r"(?:拨打|致电|拨|打|电话|热线|手机|号码|编号|房间|房号|航班|车次|邮编|尾号|密码|验证码|门牌)"
                      r"(?:号码|号)?[是为:\s]*$")
_DIALLED_LOOKBACK = 8  # characters before a number searched for such a word
# after a number of 7-10 digits: it is an amount (else read digit by digit, a telephone or account number)
_AMOUNT_AFTER = re.compile(r"\s*[元万亿人个多余吨块次辆户件名位股份台套斤克米平美欧英港日韩卢年天]")
_SERVICE = re.compile(r"(?<![0-9])(?:11[0-9]|12[02]|12306|12315|12345|10086|10010|10000|95[0-9]{3})"
                      r"(?=\s*(?:报警|急救|火警|热线|客服|服务|求助|举报|查询))")

_NUMBER = re.compile(
    r"(?<![0-9])(?<![0-9]\.)(?P<minus>(?<![0-9A-Za-z])-(?=[0-9]))?"
    r"(?P<int>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.(?P<frac>[0-9]+))?(?![0-9]|\.[0-9])"
    r"(?:\s*(?P<sign>%|‰|°C|°))?")
_AMOUNT = r"[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?"  # after a currency sign: not a comma after it ("$5，很便宜")
_CURRENCY = re.compile(rf"(?P<cur>[$¥€£])\s*(?P<num>{_AMOUNT})")
_CURRENCY_WORD = {"$": "美元", "¥": "元", "€": "欧元", "£": "英镑"}
_DATE = re.compile(r"(?<![0-9])(?P<y>[12][0-9]{3})[-/.](?P<m>1[0-2]|0?[1-9])[-/.](?P<d>3[01]|[12][0-9]|0?[1-9])"
                   r"(?![0-9])")
_DOTTED = re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+){2,}(?![0-9.])")
_GROUPS = re.compile(r"(?<![0-9.,:/-])(?:[0-9]{2,4}(?:-[0-9]{2,8}){1,3}|[0-9]{3,4}(?: [0-9]{3,4}){1,2})"
                     r"(?![0-9.,:/-])")
_CLOCK = r"(?:[01]?[0-9]|2[0-4]):[0-5][0-9]"
_CLOCK_RANGE = re.compile(f"(?<![0-9:])(?P<a>{_CLOCK})\\s*[-~至到]\\s*(?P<b>{_CLOCK})(?![0-9:])")
_CLOCK_ONE = re.compile(r"(?<![0-9:])(?P<h>[01]?[0-9]|2[0-4]):(?P<m>[0-5][0-9])(?![0-9:])")
_SCORE = re.compile(r"(?<![0-9:.])(?P<a>[0-9]+):(?P<b>[0-9]+)(?![0-9:])")
_FRACTION = re.compile(r"(?<![0-9/.])(?P<num>[0-9]+)/(?P<den>[0-9]+)(?![0-9/])")
_RANGE = re.compile(r"(?<![0-9.,:/-])(?P<a>[1-9][0-9]{0,3}|0)\s*[-~]\s*(?P<b>[1-9][0-9]{0,3}|0)(?![0-9.,:/-])")
# a dash between numbers (after NFKC: "–", "—" stay) and one after a percentage ("30%-40%": not a minus sign)
_DASH = re.compile(r"(?<=[0-9])\s*[\u2013\u2014\u2212]\s*(?=[0-9])")
_PERCENT_RANGE = re.compile(r"(?<=[0-9])\s*(?P<sign>%|‰)\s*[-~\u2013\u2014\u2212]\s*(?=[0-9])")
_CURRENCY_RANGE = re.compile(rf"(?P<cur>[$¥€£])\s*(?P<a>{_AMOUNT})\s*[-~到至]\s*[$¥€£]?\s*(?P<b>{_AMOUNT})")  # $5-10
_SHORT_YEAR_RANGE = re.compile(r"(?<![0-9])(?P<y>[12][0-9]{3})\s*[-~到至]\s*(?P<yy>[0-9]{2})(?=\s*年)")  # 1998-99年
_YEAR = re.compile(r"(?<![0-9])(?P<y>[12][0-9]{3})(?=\s*(?:[到至、]\s*[12][0-9]{3}\s*)*年)")
_YEAR_SPAN = re.compile(r"\s*年(?:前|来|之久|的历史|间|左右|多)")  # 2000年前, 1000年的历史: years counted
_SHORT_YEAR = re.compile(r"(?<![0-9])(?P<y>[0-9]{2})(?=年[0-9]{1,2}月)")  # 98年3月
_ZERO = re.compile(f"(?<=[{NUMERALS}0-9])[○◯]|[○◯](?=[{NUMERALS}0-9])")
_YAO = re.compile(f"(?<=[{NUMERALS}0-9])幺|幺(?=[{NUMERALS}0-9])")
_LIANG = re.compile(r"两(?=[百千万亿])")
_CELSIUS = re.compile(f"(?<=[{NUMERALS}])摄氏度")
_SPACES = re.compile(r"\s*")


def digit_by_digit(digits: str) -> str:
    """"2019" → 二零一九."""
    return "".join(DIGITS[int(d)] for d in digits)


def _group(value: int, leading: bool) -> str:
    """0 < value < 10000 in characters; ``leading``: the number's first group (10 → 十, not 一十)."""
    out, zero = "", False
    for place in range(3, -1, -1):
        digit = value // 10 ** place % 10
        if digit == 0:
            zero = bool(out)
            continue
        if zero:
            out += "零"
            zero = False
        if not (digit == 1 and place == 1 and leading and not out):
            out += DIGITS[digit]
        out += _SMALL_UNITS[place]
    return out


def cardinal(digits: str) -> str:
    """An integer (ASCII digits, below 10^16) as a Mandarin amount: 105000 → 十万五千; longer: digit by digit."""
    value = int(digits)
    if value == 0:
        return "零"
    groups = []
    while value:
        groups.append(value % 10000)
        value //= 10000
    if len(groups) > len(_LARGE_UNITS):
        return digit_by_digit(digits)
    out = ""
    for index in range(len(groups) - 1, -1, -1):
        group = groups[index]
        if group == 0:
            continue
        if out and (group < 1000 or groups[index + 1] == 0):  # 10050 → 一万零五十, 100000005 → 一亿零五
            out += "零"
        out += _group(group, leading=not out) + _LARGE_UNITS[index]
    return out


def _read_digit_by_digit(digits: str, text: str, start: int, end: int) -> bool:
    """Whether the integer ``digits`` at ``text[start:end]`` is read digit by digit (see the module docstring)."""
    if len(digits) > 1 and digits.startswith("0"):
        return True
    if re.fullmatch(r"1[3-9][0-9]{9}", digits) or len(digits) in (15, 18) or len(digits) > 16:
        return True  # a mobile number, an identity number; or too long for an amount
    if len(digits) >= 3 and start and text[start - 1].isascii() and text[start - 1].isalpha():
        return True  # A380, CA1234 (iPhone 12, Win10: amounts)
    if len(digits) >= 7 and not digits.endswith("000") and not _AMOUNT_AFTER.match(text, end):
        return True
    return len(digits) > 1 and bool(_DIALLED.search(text[max(0, start - _DIALLED_LOOKBACK): start]))


def _integer(digits: str, text: str = "", start: int = 0, end: int = 0) -> str:
    if _read_digit_by_digit(digits, text, start, end):
        return digit_by_digit(digits)
    return cardinal(digits)


def _liang(text: str, start: int, end: int) -> bool:
    """Whether a lone 2 at ``text[start:end]`` is read 两: a measure word after it (spaces aside), not 第 before it."""
    after = _SPACES.match(text, end).end()
    return (text.startswith(_LIANG_BEFORE, after) and not _NOT_LIANG.match(text, after)
            and not text[max(0, start - 3): start].rstrip().endswith("第"))


def _number(match: re.Match[str], text: str) -> str:
    separated = "," in match["int"]
    digits = match["int"].replace(",", "")
    spoken = cardinal(digits) if separated else _integer(digits, text, match.start("int"), match.end("int"))
    sign = match["sign"]
    if match["frac"] is not None:
        spoken += "点" + digit_by_digit(match["frac"])
    elif digits == "2" and not sign and _liang(text, match.start(), match.end()):
        spoken = "两"
    if sign == "%":
        spoken = "百分之" + spoken
    elif sign == "‰":
        spoken = "千分之" + spoken
    elif sign in ("°C", "°"):  # 摄氏度 and 度 are one word (_CELSIUS)
        spoken += "度"
    if match["minus"]:  # a temperature below zero: 零下五度
        cold = sign in ("°C", "°") or text.startswith(("度", "摄氏度"), match.end())
        spoken = ("零下" if cold else "负") + spoken
    return spoken


# words after which two neighbouring numbers are said together (三四个, 一二线): measure words and 线/楼/届/代, not
# 点 (a range of times: 1-2点 一到两点)
_APPROXIMATE_BEFORE = tuple(w for w in _LIANG_BEFORE if w != "点") + ("线", "楼", "届", "代")


def _range(match: re.Match[str], text: str) -> str:
    a, b = match["a"], match["b"]
    if int(a) >= int(b):  # 3-1: a score
        return f"{a}比{b}"
    first = "两" if a == "2" and _liang(text, match.start(), match.end()) else a  # 2-3个: 两到三个
    after = _SPACES.match(text, match.end()).end()
    if len(a) == len(b) == 1 and int(b) == int(a) + 1 and a != "0" and text.startswith(_APPROXIMATE_BEFORE, after):
        # neighbours said together before a measure word or noun: an approximate number, 1-2线 一二线 (一二线城市),
        # 3-4个 三四个, 2-3天 两三天, 1-2天 一两天; not before a sign (4-5%: 四到百分之五, which the passes after this
        # one spell), a time (1-2点 一到两点), a degree or grade (2-3度 二到三度 as 2-3°C, 3-4级) or another word
        # (在3-4之间 三到四之间)
        second = "两" if b == "2" and _liang(text, match.start(), match.end()) else DIGITS[int(b)]
        return (first if first == "两" else DIGITS[int(a)]) + second
    return f"{first}到{b}"


_CURRENCY_NAMES = {"元": ("元", "块", "圆"), "美元": ("美元", "美金", "刀"), "欧元": ("欧元",), "英镑": ("英镑",)}


def _currency_word(match: re.Match[str], text: str) -> str:
    """The word of a currency sign, unless the text names the currency after the number already ("¥30元": 三十元,
    not 三十元元; "¥5-10块": 五到十块)."""
    word = _CURRENCY_WORD[match["cur"]]
    return "" if text.startswith(_CURRENCY_NAMES[word], _SPACES.match(text, match.end()).end()) else word


GROUPED_DIGITS = 7  # digit groups joined by "-" or spaces holding this many digits or more: a number to dial
_YEARS = re.compile(r"[12][0-9]{3}-[12][0-9]{3}")


def _grouped(match: re.Match[str]) -> str:
    digits = re.sub(r"[- ]", "", match.group())
    if len(digits) < GROUPED_DIGITS or _YEARS.fullmatch(match.group()):  # 10-20, 2019-2020: a range
        return match.group()
    return digit_by_digit(digits)


def _clock(h: str, m: str) -> str:
    hour = "两" if int(h) == 2 else cardinal(h)
    return hour + "点" + ("" if m == "00" else (digit_by_digit(m) if m.startswith("0") else cardinal(m)) + "分")


def spell_numbers(text: str) -> str:
    """``text`` (simplified characters, ASCII digits: after NFKC) with its Arabic numbers spelled as Mandarin reads
    them, and the two spellings of one number made one (see the module's docstring). Text without digits keeps its
    characters except 〇, ○/◯/幺 between numerals, 两 before 百/千/万/亿 and 百分之一百."""
    text = _ZERO.sub("零", text.replace("〇", "零"))
    text = _YAO.sub("一", text)
    if any(ch.isdigit() for ch in text):
        text = _DASH.sub("-", _PERCENT_RANGE.sub(lambda m: m["sign"] + "到", text))
        text = _CURRENCY_RANGE.sub(lambda m: f"{m['a']}到{m['b']}" + _currency_word(m, text), text)
        text = _SHORT_YEAR_RANGE.sub(lambda m: f"{digit_by_digit(m['y'])}到{digit_by_digit(m['yy'])}", text)
        text = _CURRENCY.sub(lambda m: m["num"] + _currency_word(m, text), text)
        text = _DATE.sub(lambda m: f"{digit_by_digit(m['y'])}年{cardinal(m['m'])}月{cardinal(m['d'])}日", text)
        text = _DOTTED.sub(lambda m: "点".join(digit_by_digit(g) for g in m.group().split(".")), text)
        text = _GROUPS.sub(_grouped, text)
        text = _SERVICE.sub(lambda m: digit_by_digit(m.group()), text)
        text = _CLOCK_RANGE.sub(lambda m: f"{m['a']}到{m['b']}", text)
        text = _CLOCK_ONE.sub(lambda m: _clock(m["h"], m["m"]), text)
        text = _SCORE.sub(lambda m: f"{m['a']}比{m['b']}", text)
        text = _FRACTION.sub(lambda m: _integer(m["den"]) + "分之" + _integer(m["num"]), text)
        text = _RANGE.sub(lambda m: _range(m, text), text)
        text = _YEAR.sub(lambda m: m["y"] if m["y"].endswith("00") and _YEAR_SPAN.match(text, m.end())
                         else digit_by_digit(m["y"]), text)
        text = _SHORT_YEAR.sub(lambda m: digit_by_digit(m["y"]), text)
        text = _NUMBER.sub(lambda m: _number(m, text), text)
    text = _CELSIUS.sub("度", _LIANG.sub("二", text))
    return text.replace("百分之一百", "百分之百")
