"""The rules file: which groups exist and who belongs in them, by person attributes.

    groups:
      - address: eng                 # local part or full address on a company domain
        name: Engineering
        owners: [hannah@corp.example]
        kind: internal               # internal | external-allowed
        protected: false
        post: members                # members | company | anyone | moderated (every post waits)
        moderate: nonmembers         # none | nonmembers: hold, rather than refuse, who may not post
        moderators: [hannah@corp.example]  # who decides held posts; default: the owners
        visibility: company          # members | company | owners
        members:                     # several keys: all of them; a list of values: any of them
          department: Engineering
          location: [Berlin, Shanghai]
        except:                      # people who match this stay out
          title: Contractor

`members` may also be a list of such mappings (any of them), `members: everyone` takes every
active person, and a group without `members` is declared but filled by hand. A file with an
error is refused whole, with its line and the reason; the rules in force stay as they were.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.addresses import routing_refusal
from bot.config import Settings
from bot.errors import UserError
from bot.groups.service import LOCAL_PART_RE, reserved_address
from bot.i18n import t

log = logging.getLogger(__name__)

KINDS = ("internal", "external-allowed")
POST_POLICIES = ("members", "company", "anyone", "moderated")
MODERATIONS = ("none", "nonmembers")
VISIBILITIES = ("members", "company", "owners")
GROUP_KEYS = {
    "address",
    "name",
    "owners",
    "kind",
    "protected",
    "post",
    "moderate",
    "moderators",
    "visibility",
    "members",
    "except",
    "provider",
}
PROVIDERS = ("local", "google", "microsoft", "wecom", "ldap", "mailman")
# Attributes read from the person record rather than from `attributes`.
BUILTIN_KEYS = {"email", "employee_id", "name"}


class RulesError(Exception):
    """The rules file is wrong; `sentence` says where (line) and why."""

    def __init__(self, sentence: str):
        super().__init__(sentence)
        self.sentence = sentence


Condition = tuple[tuple[str, frozenset[str]], ...]  # all of these keys, each any of these values


@dataclass(frozen=True)
class GroupRule:
    address: str
    local_part: str
    display_name: str | None = None
    owners: tuple[str, ...] = ()
    kind: str = "internal"
    protected: bool = False
    post_policy: str = "company"
    visibility: str = "company"
    moderation: str = "none"
    moderators: tuple[str, ...] = ()  # (): the owners
    members: tuple[Condition, ...] | None = None  # None: no rule (filled by hand); (): nobody
    exceptions: tuple[Condition, ...] = ()
    line: int = 0
    # the rule as written (original case), for /rules and plan reasons: (members, exceptions)
    wording: tuple[tuple[Condition, ...], tuple[Condition, ...]] | None = None
    provider: str | None = None  # where its membership takes effect; None: groups.provider

    @property
    def source(self) -> str:
        return f"rule:{self.local_part}"

    @property
    def has_rule(self) -> bool:
        return self.members is not None

    def describe(self) -> str:
        """The rule in words, in the current language."""
        members, exceptions = self.wording if self.wording is not None else (self.members, self.exceptions)
        if members is None:
            return t("filled by hand")
        if members == ((),):
            text = t("everyone")
        else:
            text = t(" or ").join(_describe_condition(c) for c in members) or t("nobody")
        if exceptions:
            text = t(
                "{rule}, except {exceptions}",
                rule=text,
                exceptions=t(" or ").join(_describe_condition(c) for c in exceptions),
            )
        return text


def _describe_condition(cond: Condition) -> str:
    if not cond:
        return t("everyone")
    parts = []
    for key, values in cond:
        vs = sorted(values, key=str.lower)
        parts.append(
            t("{key} is {value}", key=key, value=vs[0])
            if len(vs) == 1
            else t("{key} is one of {values}", key=key, values=", ".join(vs))
        )
    return t(" and ").join(parts)


def person_values(
    email: str, employee_id: str | None, name: str | None, attributes: Mapping[str, Any] | None
) -> dict[str, str]:
    """The person's attributes as matching sees them: lower-cased strings, built-ins included."""
    out = {
        str(k).strip().lower(): str(v).strip().lower()
        for k, v in (attributes or {}).items()
        if v is not None and not isinstance(v, (dict, list))
    }
    out["email"] = email.lower()
    if employee_id:
        out["employee_id"] = employee_id.lower()
    if name:
        out["name"] = name.lower()
    return out


def _matches(cond: Condition, values: Mapping[str, str]) -> bool:
    return all(values.get(key) in allowed for key, allowed in cond)


@dataclass
class RuleSet:
    groups: tuple[GroupRule, ...] = ()
    path: str | None = None
    # Why the rules file could not be read: no rule is known, so no rule membership may be removed.
    error: str | None = None
    # (key, value) -> indexes of rules whose every condition needs that pair; a person only has to
    # be checked against the rules one of their pairs points to (10,000 people x 1,000 rules).
    _index: dict[tuple[str, str], list[int]] = field(default_factory=dict, repr=False)
    _always: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        for i, rule in enumerate(self.groups):
            if rule.members is None:
                continue
            for cond in rule.members:
                if not cond:
                    self._always.append(i)
                    continue
                key, values = cond[0]
                for v in values:
                    self._index.setdefault((key, v), []).append(i)

    @property
    def by_address(self) -> dict[str, GroupRule]:
        return {g.address: g for g in self.groups}

    @property
    def rule_sources(self) -> dict[str, GroupRule]:
        return {g.source: g for g in self.groups if g.has_rule}

    def groups_for(self, values: Mapping[str, str]) -> list[GroupRule]:
        """The rule groups a person with these attribute values belongs in."""
        candidates = set(self._always)
        for pair in values.items():
            candidates.update(self._index.get(pair, ()))
        found = []
        for i in sorted(candidates):
            rule = self.groups[i]
            assert rule.members is not None
            if any(_matches(c, values) for c in rule.members) and not any(
                _matches(c, values) for c in rule.exceptions
            ):
                found.append(rule)
        return found

    def describe(self) -> str:
        if not self.groups:
            if self.error:
                return t(
                    "The rules file could not be loaded, so no rule membership is added or removed: {problem}",
                    problem=self.error,
                )
            if self.path:
                return t("No group rules are in force.")
            return t("No group rules are in force.") + " " + t("Set groups.rules_file in the configuration.")
        n, where = len(self.groups), self.path or t("the rules file")
        lines = [
            t("{count} group from {path}:", count=n, path=where)
            if n == 1
            else t("{count} groups from {path}:", count=n, path=where)
        ]
        kinds = {"internal": t("internal"), "external-allowed": t("external-allowed")}
        for g in self.groups:
            flags = [kinds.get(g.kind, g.kind)]
            if g.protected:
                flags.append(t("protected"))
            flags.append(t("posting: {policy}", policy=g.post_policy))
            if g.moderation != "none":
                flags.append(t("moderated: {who}", who=g.moderation))
            owners = t("owners {owners}", owners=", ".join(g.owners)) if g.owners else t("no owner")
            lines.append(
                "  "
                + t(
                    "{group} ({flags}; {owners}) — {rule}",
                    group=g.address,
                    flags=", ".join(flags),
                    owners=owners,
                    rule=g.describe(),
                )
            )
        lines.append(
            t(
                "Rules match active people only: leavers are never added by rules, and leave every group "
                "(memberships added by hand too)."
            )
        )
        return "\n".join(lines)


# -- loading ------------------------------------------------------------------------------------
def load_rules(path: str | Path, settings: Settings) -> RuleSet:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesError(t("The rules file {path} does not exist.", path=p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(t("The rules file {path} cannot be read: {error}.", path=p, error=exc)) from None
    return parse_rules(text, settings, str(p))


def parse_rules(text: str, settings: Settings, path: str | None = None) -> RuleSet:
    name = path or t("the rules file")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise RulesError(
            t("{file}, line {line}: not valid YAML ({problem}).", file=name, line=line, problem=exc.problem)
        ) from None
    except yaml.YAMLError as exc:
        raise RulesError(t("{file}: not valid YAML ({problem}).", file=name, problem=exc)) from None
    if root is None:
        return RuleSet((), path)
    top = _mapping(root, name, t("the file"))
    unknown = [k for k in top if k != "groups"]
    if unknown:
        raise RulesError(
            t(
                "{file}, line {line}: unknown top-level key “{key}” (the file holds `groups:`).",
                file=name,
                line=_line(top[unknown[0]][0]),
                key=unknown[0],
            )
        )
    if "groups" not in top:
        return RuleSet((), path)
    seq = top["groups"][1]
    if not isinstance(seq, yaml.SequenceNode):
        raise RulesError(
            t("{file}, line {line}: `groups` must be a list of groups.", file=name, line=_line(seq))
        )
    rules: list[GroupRule] = []
    seen: dict[str, int] = {}
    for item in seq.value:
        rule = _group(item, name, settings)
        if rule.address in seen:
            raise RulesError(
                t(
                    "{file}, line {line}: {group} is declared twice (first on line {first}).",
                    file=name,
                    line=rule.line,
                    group=rule.address,
                    first=seen[rule.address],
                )
            )
        seen[rule.address] = rule.line
        rules.append(rule)
    return RuleSet(tuple(rules), path)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping(node: yaml.Node, name: str, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise RulesError(
            t(
                "{file}, line {line}: {what} must be a mapping of keys to values.",
                file=name,
                line=_line(node),
                what=what,
            )
        )
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode):
            raise RulesError(t("{file}, line {line}: a key must be a plain word.", file=name, line=_line(k)))
        key = str(k.value).strip()
        if key in out:
            raise RulesError(
                t(
                    "{file}, line {line}: “{key}” is given twice in {what}.",
                    file=name,
                    line=_line(k),
                    key=key,
                    what=what,
                )
            )
        out[key] = (k, v)
    return out


def _scalar(node: yaml.Node, name: str, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.value is None or str(node.value).strip() == "":
        raise RulesError(
            t("{file}, line {line}: {what} must be a single value.", file=name, line=_line(node), what=what)
        )
    return str(node.value).strip()


def _scalars(node: yaml.Node, name: str, what: str) -> list[str]:
    if isinstance(node, yaml.SequenceNode):
        values = [_scalar(v, name, what) for v in node.value]
        if not values:
            raise RulesError(
                t("{file}, line {line}: {what} is an empty list.", file=name, line=_line(node), what=what)
            )
        return values
    return [_scalar(node, name, what)]


def _bool(node: yaml.Node, name: str, what: str) -> bool:
    raw = _scalar(node, name, what).lower()
    if raw in ("true", "yes", "on"):
        return True
    if raw in ("false", "no", "off"):
        return False
    raise RulesError(
        t(
            "{file}, line {line}: {what} must be true or false, not “{text}”.",
            file=name,
            line=_line(node),
            what=what,
            text=raw[:40],
        )
    )


def _choice(node: yaml.Node, name: str, what: str, options: Iterable[str]) -> str:
    raw = _scalar(node, name, what).lower()
    opts = tuple(options)
    if raw not in opts:
        raise RulesError(
            t(
                "{file}, line {line}: {what} must be one of {options}, not “{text}”.",
                file=name,
                line=_line(node),
                what=what,
                options=", ".join(opts),
                text=raw[:40],
            )
        )
    return raw


def _conditions(node: yaml.Node, name: str, what: str, keep_case: bool = False) -> tuple[Condition, ...]:
    if isinstance(node, yaml.ScalarNode) and str(node.value).strip().lower() in ("everyone", "all", "*"):
        return ((),)
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    if not items:
        raise RulesError(
            t("{file}, line {line}: {what} is an empty list.", file=name, line=_line(node), what=what)
        )
    out: list[Condition] = []
    for item in items:
        m = _mapping(item, name, what)
        if not m:
            raise RulesError(
                t(
                    "{file}, line {line}: {what} has no attribute to match.",
                    file=name,
                    line=_line(item),
                    what=what,
                )
            )
        cond = []
        for key, (knode, vnode) in m.items():
            k = key.lower()
            if not k.replace("_", "").replace("-", "").isalnum():
                raise RulesError(
                    t(
                        "{file}, line {line}: “{key}” is not an attribute name.",
                        file=name,
                        line=_line(knode),
                        key=key[:40],
                    )
                )
            values = frozenset(
                v if keep_case else v.lower() for v in _scalars(vnode, name, t("the value of {key}", key=key))
            )
            cond.append((k, values))
        out.append(tuple(cond))
    return tuple(out)


def _group(node: yaml.Node, name: str, settings: Settings) -> GroupRule:
    from bot.addresses import normalise
    from bot.errors import UserError

    line = _line(node)
    m = _mapping(node, name, t("a group"))
    unknown = [k for k in m if k not in GROUP_KEYS]
    if unknown:
        raise RulesError(
            t(
                "{file}, line {line}: unknown key “{key}” (a group takes {keys}).",
                file=name,
                line=_line(m[unknown[0]][0]),
                key=unknown[0][:40],
                keys=", ".join(sorted(GROUP_KEYS)),
            )
        )
    if "address" not in m:
        raise RulesError(t("{file}, line {line}: a group needs an `address`.", file=name, line=line))
    anode = m["address"][1]
    raw = _scalar(anode, name, "address").lower()
    if "@" not in raw:
        raw = f"{raw}@{settings.org.domains[0]}"
    try:
        address = normalise(raw)
    except UserError as exc:
        raise RulesError(
            t("{file}, line {line}: {problem}", file=name, line=_line(anode), problem=exc.sentence)
        ) from None
    local = address.split("@", 1)[0]
    if not LOCAL_PART_RE.match(local):
        raise RulesError(
            t(
                "{file}, line {line}: “{name}” cannot be a group's name: use letters, digits, dot, dash "
                "or underscore.",
                file=name,
                line=_line(anode),
                name=local,
            )
        )
    if not settings.is_internal(address):
        raise RulesError(
            t(
                "{file}, line {line}: {address} is outside {domains}; a group's address must be on a "
                "company domain.",
                file=name,
                line=_line(anode),
                address=address,
                domains=", ".join(settings.org.domains),
            )
        )
    reserved = reserved_address(settings, address)
    if reserved is not None:
        raise RulesError(t("{file}, line {line}: {problem}", file=name, line=_line(anode), problem=reserved))
    owners: list[str] = []
    if "owners" in m:
        onode = m["owners"][1]
        for o in _scalars(onode, name, "owners"):
            try:
                owners.append(normalise(o))
            except UserError as exc:
                raise RulesError(
                    t("{file}, line {line}: {problem}", file=name, line=_line(onode), problem=exc.sentence)
                ) from None
    moderators: list[str] = []
    if "moderators" in m:
        mnode = m["moderators"][1]
        for o in _scalars(mnode, name, "moderators"):
            try:
                moderators.append(normalise(o))
            except UserError as exc:
                raise RulesError(
                    t("{file}, line {line}: {problem}", file=name, line=_line(mnode), problem=exc.sentence)
                ) from None
    kind = _choice(m["kind"][1], name, "kind", KINDS) if "kind" in m else "internal"
    if kind == "internal":
        outside = [o for o in owners if not settings.is_internal(o)]
        routed = routing_refusal(outside[0], settings) if outside else None
        if routed:
            raise RulesError(
                t(
                    "{file}, line {line}: {why}, and {address} is an internal group: it can't own it.",
                    file=name,
                    line=_line(m["owners"][1]),
                    why=routed,
                    address=address,
                )
            )
        if outside:
            raise RulesError(
                t(
                    "{file}, line {line}: {email} is external and {address} is an internal group: external "
                    "people can't own it.",
                    file=name,
                    line=_line(m["owners"][1]),
                    email=outside[0],
                    address=address,
                )
            )
    members = _conditions(m["members"][1], name, "members") if "members" in m else None
    exceptions = _conditions(m["except"][1], name, "except") if "except" in m else ()
    if exceptions == ((),):
        raise RulesError(
            t(
                "{file}, line {line}: `except: everyone` would leave the group empty.",
                file=name,
                line=_line(m["except"][1]),
            )
        )
    if exceptions and members is None:
        raise RulesError(
            t(
                "{file}, line {line}: `except` needs a `members` rule to except from.",
                file=name,
                line=_line(m["except"][0]),
            )
        )
    provider = None
    if "provider" in m:
        pnode = m["provider"][1]
        provider = _choice(pnode, name, "provider", PROVIDERS)
        if provider != "local" and provider not in settings.providers.configured():
            raise RulesError(
                t(
                    "{file}, line {line}: the provider {provider} is not configured: fill in [providers.{provider}] "
                    "(manifests/{provider}/README.md).",
                    file=name,
                    line=_line(pnode),
                    provider=provider,
                )
            )
    wording = None
    if members is not None:
        wording = (
            _conditions(m["members"][1], name, "members", keep_case=True),
            _conditions(m["except"][1], name, "except", keep_case=True) if "except" in m else (),
        )
    return GroupRule(
        wording=wording,
        address=address,
        local_part=local,
        display_name=_scalar(m["name"][1], name, "name")[:200] if "name" in m else None,
        owners=tuple(owners),
        kind=kind,
        protected=_bool(m["protected"][1], name, "protected") if "protected" in m else False,
        post_policy=_choice(m["post"][1], name, "post", POST_POLICIES) if "post" in m else "company",
        visibility=_choice(m["visibility"][1], name, "visibility", VISIBILITIES)
        if "visibility" in m
        else "company",
        moderation=_choice(m["moderate"][1], name, "moderate", MODERATIONS) if "moderate" in m else "none",
        moderators=tuple(moderators),
        members=members,
        exceptions=exceptions,
        line=line,
        provider=provider,
    )


# -- the rules in force -------------------------------------------------------------------------
class RuleBook:
    """The rules this process runs on: read from `groups.rules_file` the first time they are needed,
    replaced by `/rules reload`, and read again whenever the file changes on disk (its modification
    time, size or inode, checked each time the rules are used): a `/rules reload` typed in another
    process (`postroom chat`) reaches a running `postroom serve` that way. A file that does not load
    leaves the rules in force as they are (`file_error` says why, and `/rules` shows it); with no rules
    read before, that is *unknown* rules (not "no rules"): plans then add nothing and remove no rule
    membership."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._rules: RuleSet | None = None
        self._seen: tuple[int, int, int] | None = None  # the file as it was when last read
        self.file_error: str | None = None  # the file changed and does not load (the rules in force stay)

    def _stamp(self) -> tuple[int, int, int] | None:
        path = self.settings.groups.rules_file
        if not path:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> RuleSet:
        path = self.settings.groups.rules_file
        if self._rules is not None and path and self._stamp() != self._seen:
            self._seen = self._stamp()
            try:
                self._rules = load_rules(path, self.settings)
                self.file_error = None
                log.info("group rules file %s changed: read again", path)
            except RulesError as exc:
                log.error("group rules file %s changed and does not load: %s", path, exc.sentence)
                if self._rules.error:  # nothing known was in force: still nothing known
                    self._rules = RuleSet((), path, error=exc.sentence)
                else:
                    self.file_error = exc.sentence
        if self._rules is None:
            self._seen = self._stamp()
            rules = RuleSet((), None)
            if path:
                try:
                    rules = load_rules(path, self.settings)
                except RulesError as exc:
                    log.error("group rules not loaded: %s", exc.sentence)
                    rules = RuleSet((), path, error=exc.sentence)
            self._rules = rules
        return self._rules

    def describe(self) -> str:
        """The rules in force, in words (and, when the file changed and does not load, why)."""
        rules = self.current()
        if self.file_error and not rules.error:
            return (
                t(
                    "The rules file changed but could not be loaded, so the rules loaded before stay in force: "
                    "{problem}",
                    problem=self.file_error,
                )
                + "\n"
                + rules.describe()
            )
        return rules.describe()

    def in_force(self) -> RuleSet | None:
        """The rules in force if they were read already (None: not yet)."""
        return self._rules

    def use(self, rules: RuleSet | None) -> None:
        """Put `rules` in force (None: read the file again when next needed)."""
        self._rules = rules
        self._seen = self._stamp()
        self.file_error = None

    def check_at_start(self) -> RuleSet:
        """`serve` and the demo start only on a rules file that loads: a broken one would strip every mover."""
        rules = self.current()
        if rules.error:
            raise UserError(
                t(
                    "The group rules file could not be loaded, so Postroom did not start: {problem}",
                    problem=rules.error,
                )
            )
        return rules

    def read(self) -> RuleSet:
        """The rules file as it is now, not yet in force; UserError (the rules in force unchanged) if it
        does not load."""
        path = self.settings.groups.rules_file
        if not path:
            raise UserError(t("No rules file is configured: set groups.rules_file in the configuration."))
        try:
            return load_rules(path, self.settings)
        except RulesError as exc:
            in_force = self.current()
            if in_force.error:  # nothing was known before either: say what /rules says
                raise UserError(in_force.describe()) from None
            raise UserError(t("{problem} The rules in force are unchanged.", problem=exc.sentence)) from None
