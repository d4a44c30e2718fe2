import pytest

from utils.text import cer, count_errors, error_rate, is_english, normalize_text, scoring_text, to_simplified, wer


def test_invisible_characters_and_emoji_are_not_scored():
    """A zero-width space in a reference counted as an error (1 in 10 characters), so did an emoji."""
    assert count_errors("你要注意\u200b保暖，别着凉。", "你要注意保暖。别着凉。").errors == 0
    assert count_errors("这个周末是八月的最后两天。😀", "这个周末是八月的最后两天").errors == 0
    assert normalize_text("a\u200bb \ufeffc 😀 d") == "ab c d"
    # ... nor what only changes how an emoji or a digit is drawn (a variation selector, a skin tone, a keycap: 1 error
    # each), nor a zero-width space inside a number ("2\u200b5" was read as 二五)
    assert count_errors("我爱你❤️", "我爱你", "cer", language="zh").errors == 0
    assert count_errors("好的👍🏻", "好的", "cer", language="zh").errors == 0
    assert count_errors("第1️⃣名", "第一名", "cer", language="zh").errors == 0
    assert count_errors("今天温度是2\u200b5度。", "今天温度是二十五度", "cer", language="zh").errors == 0
    assert count_errors("今天温度是2\u200b5度。", "今天温度是二十五度", "cer").errors == 0  # language unknown


def test_the_hidden_characters_a_taught_text_goes_without_are_every_format_character_and_wide_space():
    """clean_text's character class (written out as ranges, 5 times faster than asking unicodedata per character)
    holds every format character but the zero-width (non-)joiners, and every white space outside ASCII."""
    import unicodedata

    from utils.text import _HIDDEN

    for code in range(0x110000):
        ch = chr(code)
        hidden = (unicodedata.category(ch) == "Cf" and ch not in "\u200c\u200d") or (ch.isspace() and not ch.isascii())
        assert not hidden or _HIDDEN.match(ch), hex(code)


def test_normalize_removes_ascii_and_fullwidth_punctuation():
    s = "“你好”，《世界》（测试）…、；：！？, Hello. World!"
    assert normalize_text(s) == "你好 世界 测试 hello world"


def test_punctuation_inside_numbers_is_part_of_them():
    """A decimal point or a clock's colon between digits is kept ("3.14" vs "314", "5:30" vs "530" were no error), a
    thousands separator dropped ("1,000" vs "1000" was two word errors); elsewhere punctuation still goes."""
    assert count_errors("3.14", "314", "cer").errors == 1
    assert count_errors("5:30", "530", "cer").errors == 1
    assert count_errors("Python 2.0", "python 20", "wer", language="de").errors == 1
    assert count_errors("1,000 Euro", "1000 Euro", "wer", language="de").errors == 0
    assert count_errors("温度是３．５度", "温度是3.5度", "cer").errors == 0  # full-width folds first
    assert (normalize_text("1,000,000 dollars. 5 is 1,2,3 or a.b, 12,3456")
            == "1000000 dollars 5 is 1 2 3 or a b 12 3456")


def test_traditional_to_simplified():
    assert to_simplified("這個問題很難") == "这个问题很难"
    assert normalize_text("這個問題") == "这个问题"


def test_fullwidth_latin_and_case():
    assert normalize_text("ＡＢＣ１２３") == "abc123"


def test_cer_ignores_spaces_and_punctuation():
    assert cer(["今天 天气，很好。"], ["今天天气很好"]) == 0.0


def test_error_counts():
    c = count_errors("今天天气很好", "今天天汽好好啊", "cer")
    assert c.errors == 3 and c.reference_length == 6
    assert c.rate == pytest.approx(0.5)


def test_wer_words():
    assert wer(["the cat sat"], ["the cat sat down"]) == pytest.approx(1 / 3)
    assert wer(["The cat, sat!"], ["the cat sat"]) == 0.0


def test_corpus_level_not_mean_of_rates():
    # 1 error in a 1-char ref + 0 errors in a 9-char ref = 1/10, not mean(1, 0)
    assert cer(["a", "bcdefghij"], ["x", "bcdefghij"]) == pytest.approx(0.1)


def test_mismatched_lengths():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_rate(["a", "b"], ["a"])


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric"):
        count_errors("a", "b", "bleu")


def test_language_table_is_whispers():
    """utils.languages keeps Whisper's language table (so the ct2 path never imports transformers for it);
    it must stay transformers' own: same codes in token order, names and aliases."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    from utils import languages

    assert list(languages.LANGUAGES.items()) == list(LANGUAGES.items())
    assert languages.TO_LANGUAGE_CODE == TO_LANGUAGE_CODE
    assert languages.language_code("Mandarin") == "zh" and languages.language_name("yue") == "cantonese"
    # locales as Common Voice and others write them (a manifest's "en-US" was refused)
    assert [languages.language_code(x) for x in ("en-US", "zh-CN", "zh_TW", "pt-BR", "cmn")] == ["en", "zh", "zh",
                                                                                              "pt", "zh"]
    # FLEURS configs and ISO 639-2/3 codes (cmn_hans_cn was refused), the names in Chinese a Chinese manifest uses
    assert [languages.language_code(x) for x in ("cmn_hans_cn", "cmn-Hans-CN", "yue_hant_hk", "zho", "eng", "普通话",
                                                 "中文", "粤语", "英文")] == ["zh", "zh", "yue", "zh", "en", "zh", "zh",
                                                                            "yue", "en"]
    with pytest.raises(ValueError):
        languages.language_code("xx-YY")


def test_english_is_scored_with_whispers_english_normaliser():
    # the same words written differently are not errors: numbers, fillers, titles, contractions
    ref = "Eight of spades, four of clubs. Go forward ten meters, Mr. Dashwood."
    hyp = "8 of spades, 4 of clubs, um, go forward 10 meters, mister Dashwood"
    assert count_errors(ref, hyp, "wer", language="English").errors == 0
    assert count_errors(ref, hyp, "wer", language="en").errors == 0
    assert count_errors(ref, hyp, "wer").errors == 5  # language unknown: only punctuation and case
    # a real error still counts, and other languages keep their words ("um" is German for "around")
    assert count_errors("go forward ten meters", "go forward two meters", "wer", language="en").errors == 1
    assert count_errors("um acht Uhr", "acht Uhr", "wer", language="German").errors == 1
    assert error_rate(["ten"], ["10"], "wer", language="English") == 0.0
    # "y'know" (a reference of dataset/real/) was "y know", one error against "you know"
    assert count_errors("but, y'know, it works", "But you know it works", "wer", language="en").errors == 0
    assert all(is_english(x) for x in ("en-US", "<|en|>", " english "))
    assert not is_english("zh") and not is_english(None)


def test_a_numbers_sign_is_scored_as_the_word_it_is_said_as():
    # Whisper's normaliser writes "minus 5" as "-5" and drops the sign of "-5": a left-out "minus" was no error
    assert count_errors("minus five degrees", "5 degrees", "wer", language="en").errors == 1
    assert count_errors("minus five degrees", "-5 degrees", "wer", language="en").errors == 0
    assert count_errors("It is -5 degrees", "it is minus five degrees", "wer", language="en").errors == 0
    assert count_errors("plus five", "5", "wer", language="en").errors == 1
    # ... also before "one" (the normaliser's 1) and a decimal point ("minus point five" is "-.5" to it)
    assert count_errors("minus one degree", "1 degree", "wer", language="en").errors == 1
    assert count_errors("minus point five", "point five", "wer", language="en").errors == 1
    assert count_errors("minus point five", "minus five", "wer", language="en").errors == 1  # ".5" was "5"
    assert count_errors("minus point five degrees", "-0.5 degrees", "wer", language="en").errors == 0
    assert count_errors("it is -1 degrees", "it is minus one degrees", "wer", language="en").errors == 0
    assert scoring_text("a 3-0 win, pages 10-20, x-5", "en") == "a 3 0 win pages 10 20 x 5"  # hyphens stay gaps
    assert count_errors("延迟是 minus five", "延迟是 five", "mer").errors == 1


def test_mixed_error_rate_counts_a_chinese_character_or_an_english_word_as_one_unit():
    """Code-switching speech: cer scored "Kubernetes" as 10 units beside one per Hanzi, and wer scored a text that
    differs only in the spaces around English words as all wrong ("打开GitHub的pullrequest": 5 of 5)."""
    from utils.text import METRICS, has_repetition, units

    assert "mer" in METRICS
    assert units("我们用kubernetes 部署 api的latency", "mer") == ["我", "们", "用", "kubernetes", "部", "署", "api", "的",
                                                                 "latency"]
    same = count_errors("我们用 Kubernetes 部署服务", "我们用Kubernetes部署服务。", "mer")
    assert (same.errors, same.reference_length) == (0, 8)
    heard = count_errors("我们用 Kubernetes 部署服务", "我们用 酷伯内提斯 部署服务", "mer")
    assert (heard.substitutions, heard.insertions, heard.reference_length) == (1, 4, 8)
    assert count_errors("打开 GitHub 的 pull request", "打开GitHub的pullrequest", "mer").errors == 2  # pullrequest
    assert count_errors("今天天气很好", "今天天汽很好", "mer").rate == count_errors("今天天气很好", "今天天汽很好").rate
    # its English stretches are read with Whisper's English rules, as English text is (cer: 10 of 15 wrong)
    assert count_errors("延迟是 two hundred ms", "延迟是 200 ms", "mer", language="Chinese").errors == 0
    assert count_errors("延迟是 two hundred ms", "延迟是 200 ms", "cer", language="Chinese").errors == 10
    # a loop of a long English word in Chinese text (cer's characters held it in no unit of 8)
    assert has_repetition("我们用 Kubernetes Kubernetes Kubernetes Kubernetes 部署服务", "我们用 Kubernetes 部署服务")
    assert has_repetition("谢谢谢谢谢谢谢谢", "谢谢") and not has_repetition("哈哈哈", "哈哈哈")
    assert all(has_repetition(loop) for loop in ("네네네네네네", "hahahahahahahaha", "1111111111111", "ขอบคุณ" * 5))


@pytest.mark.parametrize("digits, spoken", [
    # amounts
    ("25度", "二十五度"), ("10", "十"), ("105000", "十万五千"), ("1005", "一千零五"), ("10050", "一万零五十"),
    ("100000005元", "一亿零五元"), ("1,000元", "一千元"), ("1,000,000,000,000", "一万亿"), ("10000000000", "一百亿"),
    ("12345678元", "一千二百三十四万五千六百七十八元"), ("3.14", "三点一四"), ("1.5万", "一点五万"), ("COVID-19", "COVID-十九"),
    ("1,2,3", "一,二,三"), ("5G", "五G"), ("iPhone 12", "iPhone 十二"),
    # 两 and 二
    ("2个人", "两个人"), ("2人受伤", "两人受伤"), ("2点", "两点"), ("2点30分", "两点三十分"), ("第2个", "第二个"),
    ("2月", "二月"), ("2年级", "二年级"), ("2点5亿", "二点五亿"), ("12个", "十二个"), ("2000", "二千"), ("两万", "二万"),
    ("1200", "一千二百"), ("2-3个", "两三个"), ("2-4个", "两到四个"), ("2:30", "两点三十分"),
    # two neighbouring digits are said together (whisper-base wrote 1-2线城市 for an AISHELL-1 reference's 一二线城市)
    ("1-2线城市", "一二线城市"), ("3-4个人", "三四个人"), ("3-5天", "三到五天"), ("10-11点", "十到十一点"),
    ("1-2天", "一两天"), ("第1-2名", "第一二名"), ("1-2点", "一到两点"), ("增长4-5%", "增长四到百分之五"),
    ("气温2-3°C", "气温二到三度"), ("比分是1-2", "比分是一到二"), ("气温2-3度", "气温二到三度"), ("在3-4之间", "在三到四之间"),
    ("2-3千元", "两三千元"),
    # digit by digit
    ("2019年", "二零一九年"), ("2019-2020年", "二零一九到二零二零年"), ("98年3月", "九八年三月"), ("2000年前", "二千年前"),
    ("007", "零零七"), ("13812345678", "一三八一二三四五六七八"), ("138 1234 5678", "一三八一二三四五六七八"),
    ("400-123-4567", "四零零一二三四五六七"), ("62543210", "六二五四三二一零"), ("拨打12306", "拨打一二三零六"),
    ("110报警", "一一零报警"), ("房间302", "房间三零二"), ("A380", "A三八零"), ("192.168.1.1", "一九二点一六八点一点一"),
    # signs, units, dates, between numbers
    ("50%", "百分之五十"), ("100%", "百分之百"), ("-3.5%", "负百分之三点五"), ("3‰", "千分之三"), ("3/4", "四分之三"),
    ("25°C", "二十五度"), ("-5°C", "零下五度"), ("二十五摄氏度", "二十五度"), ("-5度", "零下五度"), ("$5", "五美元"), ("¥30", "三十元"),
    ("2020-03-05", "二零二零年三月五日"), ("2020/3/5", "二零二零年三月五日"), ("3-5天", "三到五天"), ("3~5", "三到五"),
    ("10-20人", "十到二十人"), ("以3-1击败", "以三比一击败"), ("以3-0获胜", "以三比零获胜"), ("3:2", "三比二"), ("5:30", "五点三十分"),
    ("5:05", "五点零五分"),
    ("12:00", "十二点"), ("9:00-17:00", "九点到十七点"),
    ("增长30%-40%", "增长百分之三十到百分之四十"), ("30%~40%", "百分之三十到百分之四十"), ("2019\u20142020年", "二零一九到二零二零年"),
    ("2019\u20132020年", "二零一九到二零二零年"), ("10\u201420个", "十到二十个"), ("25 °C", "二十五度"), ("50 %的人", "百分之五十的人"),
    ("相差3 %-5 %", "相差百分之三到百分之五"), ("5%\u221210%", "百分之五到百分之十"), ("$5\u201410", "五到十美元"),
    ("¥5-10元", "五到十元"), ("¥30元", "三十元"), ("¥5-10块", "五到十块"), ("$5到10", "五到十美元"), ("花了$5，", "花了五美元，"),
    ("1998\u201499年", "一九九八到九九年"), ("1998-99年", "一九九八到九九年"),
    # one spelling of one number
    ("二〇一九年", "二零一九年"), ("二○一九年", "二零一九年"), ("幺幺零", "一一零"), ("百分之一百", "百分之百"),
])
def test_chinese_numbers_are_spelled_as_read(digits, spoken):
    from utils.zh_numbers import spell_numbers

    assert spell_numbers(digits) == spoken


def test_chinese_numbers_in_digits_or_characters_score_alike():
    # AISHELL writes numbers in characters, Whisper mostly in digits: the same words, no error
    for reference, hypothesis in [("今天气温十六度", "今天气温16度"), ("二〇一九年三月", "2019年3月"),
                                  ("两千块", "2000块"), ("一千两百", "1200"), ("增长百分之五十", "增长50%"),
                                  ("两个人", "2个人"), ("三点五米", "3.5米"), ("十六", "16"), ("呃…两个人", "呃…2个人"),
                                  ("兩千", "2000"), ("零下五摄氏度", "-5℃"), ("气温二十五度", "气温25℃"), ("拨打幺二三零六", "拨打12306"),
                                  ("上午十点三十分", "上午10:30")]:
        assert count_errors(reference, hypothesis).errors == 0, (reference, hypothesis)
        assert count_errors(reference, hypothesis, language="Chinese").errors == 0, (reference, hypothesis)
    assert count_errors("今天气温十六度", "今天气温17度").errors == 1  # 十六 / 十七: one character wrong, as said
    assert count_errors("延迟是两百毫秒", "延迟是 two hundred 毫秒", "mer").errors == 0  # English words, then numbers
    # other languages keep their digits: Japanese reads 16 as じゅうろく, English is normalised to digits
    assert count_errors("十六", "16", language="ja").errors == 2
    assert count_errors("ten apples", "10 apples", "wer", language="en").errors == 0
    assert count_errors("ten apples", "10 apples", "wer").errors == 1  # unknown language, no Chinese: as written
