"""Property tests: the command parser and campaign template rendering, on arbitrary input."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from markupsafe import escape

from bot.campaigns.templates import MAX_RENDERED_BYTES, CompiledTemplate, TemplateProblem, TemplateSource
from bot.commandline import MAX_COMMAND_LENGTH, Spec, parse, quote, tokenize
from bot.commands import campaigns, general, groups
from bot.errors import UserError

SPECS = [v for m in (general, groups, campaigns) for v in vars(m).values() if isinstance(v, Spec)]
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text as people and messengers send it: quotes of every kind, dashes, escapes, control characters.
chat_text = st.text(
    alphabet=st.one_of(st.sampled_from(list("\"'“”‘’\\-= \t\n\u00a0\u202e\x00{}%")), st.characters()),
    max_size=300,
)
word = st.text(st.characters(blacklist_characters="\x00"), max_size=40)


def test_every_command_spec_is_checked() -> None:
    assert len(SPECS) >= 17  # help, five group commands, ten campaign subcommands, approve, reject


@PROPS
@given(chat_text)
@example('"unclosed')
@example("it's")
@example("a" * (MAX_COMMAND_LENGTH + 1))
def test_tokenize_returns_words_or_says_why(text: str) -> None:
    try:
        tokens = tokenize(text)
    except UserError as exc:
        assert exc.sentence.endswith(".")
        return
    assert all(isinstance(t, str) for t in tokens)
    assert all(t or '""' in text or "''" in text or "“”" in text for t in tokens)  # empty only when quoted


@PROPS
@given(
    st.sampled_from(SPECS),
    st.lists(
        st.one_of(word, st.sampled_from(["--", "--to", "--to=", "--subject", "--x=1", "-", "--template=a"])),
        max_size=8,
    ),
)
def test_parse_accepts_or_answers_with_usage(spec: Spec, tokens: list[str]) -> None:
    try:
        parsed = parse(spec, tokens)
    except UserError as exc:
        assert exc.sentence.endswith(".") and exc.usage == spec.usage
        return
    for arg in spec.args:
        if arg.required:
            assert parsed.args[arg.name] is not None
    assert set(parsed.flags) <= {f.name for f in spec.flags}


@PROPS
@given(st.lists(word, max_size=10))
def test_quoted_values_read_back_unchanged(values: list[str]) -> None:
    assert tokenize(" ".join(quote(v) for v in values)) == values


@PROPS
@given(word.filter(lambda v: v.strip() != ""))
def test_a_flag_value_reads_back_unchanged(value: str) -> None:
    spec = campaigns.NEW
    parsed = parse(spec, tokenize(f"x --to customers --template welcome --subject={quote(value)}"))
    assert parsed.flag("subject") == value and parsed.arg("name") == "x"


# -- templates ------------------------------------------------------------------------------------
SOURCE = TemplateSource(
    "t",
    "<p>Hello {{ name }} at {{ company }}</p><a href='{{ unsubscribe_url }}'>x</a>",
    "Hello {{ name }} at {{ company }}\n",
)
TEMPLATE = CompiledTemplate(SOURCE, "News for {{ company }}")


@PROPS
@given(st.text(max_size=500), st.text(max_size=500))
@example("{{ 7*7 }}", "{% for i in range(9999) %}x{% endfor %}")
@example("<script>alert(1)</script>", "{{ ''.__class__.__mro__[1].__subclasses__() }}")
def test_attribute_values_are_data_never_template(name: str, company: str) -> None:
    rendered = TEMPLATE.render({"name": name, "company": company, "unsubscribe_url": "https://u.example/1"})
    assert str(escape(name)) in rendered.html
    assert f"Hello {name} at {company}\n" == rendered.text
    assert rendered.subject == " ".join(f"News for {company}".split())
    if "<" in company:
        assert f"at {company}</p>" not in rendered.html  # autoescaped


HOSTILE_BODIES = [
    "{{ 'a' * N }}",
    "{{ N * 'a' }}",
    "{{ ['a'] * N }}",
    "{{ 'a'|center(N) }}",
    "{{ 'a'.ljust(N) }}",
    "{{ 'a'.zfill(N) }}",
    "{{ '%*d' % (N, 1) }}",
    "{{ '%Nd' % 1 }}",
    "{{ '{:>N}'.format(1) }}",
    "{{ 'x'|indent(N) }}",
    "{{ ('x' * 1000).replace('x', 'y' * N) }}",
    "{{ ('y' * N).join(['a'] * 1000) }}",
    "{% for i in range(N) %}{{ 'a' * 1000 }}{% endfor %}",
    "{% for i in range(10000) %}{% for j in range(10000) %}ab{% endfor %}{% endfor %}",
    "{% macro d(s, n) %}{{ d(s ~ s, n - 1) if n else s }}{% endmacro %}{{ d('ab', N) }}",
    "{{ 2 ** N }}",
    "{{ (N ** 1000) ** 1000 }}",
    "{{ x.__class__.__mro__ }}",
    "{{ x.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{% set l = [] %}{{ l.append(N) }}",
    "{{ self.__dict__ }}",
    "{{ range.__self__ }}",
]


@PROPS
@given(st.sampled_from(HOSTILE_BODIES), st.integers(min_value=1, max_value=10**9))
def test_hostile_templates_are_refused_or_capped(body: str, n: int) -> None:
    source = TemplateSource("t", body.replace("N", str(n)), None)
    try:
        rendered = CompiledTemplate(source, "s").render({"x": "x"})
    except TemplateProblem as exc:
        assert exc.sentence.endswith(".") and "\n" not in exc.sentence
        return
    assert len(rendered.html) + len(rendered.text) <= MAX_RENDERED_BYTES
    assert "<class" not in rendered.html and "globals" not in rendered.html


@pytest.mark.parametrize(
    "subject",
    [
        '{{ "a" * 100000000 }}',
        "{{ ''.__class__ }}",
        "{{ x.__class__.__mro__ }}",
        "{{ name|center(999999999) }}",
        "{% for i in range(10) %}x{% endfor %}",
        "{{ lipsum() }}",
        "{% macro m() %}{% endmacro %}",
        "{{ 10 ** 10 ** 10 }}",
        "{{ name",
    ],
)
def test_hostile_subjects_are_refused_with_a_sentence(subject: str) -> None:
    with pytest.raises(TemplateProblem) as caught:
        CompiledTemplate(SOURCE, subject)
    assert caught.value.sentence.endswith(".") and "Traceback" not in caught.value.sentence


@PROPS
@given(chat_text)
def test_any_subject_compiles_or_is_refused(subject: str) -> None:
    try:
        template = CompiledTemplate(SOURCE, subject)
        rendered = template.render({"name": "N", "company": "C", "unsubscribe_url": "u"})
    except TemplateProblem as exc:
        assert exc.sentence.endswith(".")
        return
    assert len(rendered.subject) <= 500 and "\n" not in rendered.subject
