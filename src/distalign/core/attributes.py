"""Attributes: an ordered list of classes with labels, parser keywords and steering tokens.

Gender, race and sentiment are config entries, not code: ``Attribute.from_config`` builds any
attribute a user writes in YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AttributeClass:
    name: str
    label: str
    keywords: tuple[str, ...]
    lexicon: tuple[str, ...] = ()
    tokens: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Attribute:
    name: str
    classes: tuple[AttributeClass, ...]
    default_token_set: str = "digits"
    story_judge: str = "lexicon"

    @classmethod
    def from_config(cls, name: str, spec: dict) -> Attribute:
        classes = []
        for c in spec["classes"]:
            kws = [c["label"].lower()] + [k.lower() for k in c.get("keywords", [])]
            kws = list(dict.fromkeys(kws))  # dedupe, keep order
            classes.append(
                AttributeClass(
                    name=c["name"],
                    label=c["label"],
                    keywords=tuple(kws),
                    lexicon=tuple(w.lower() for w in c.get("lexicon", [])),
                    tokens=dict(c.get("tokens", {})),
                )
            )
        return cls(
            name=name,
            classes=tuple(classes),
            default_token_set=spec.get("default_token_set", "digits"),
            story_judge=spec.get("story_judge", "lexicon"),
        )

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"attribute {self.name!r} has no class {name!r} (classes: {self.names})") from None

    def steering_tokens(self, token_set: str | None = None) -> list[str]:
        """Steering token strings of each class, in class order."""
        ts = token_set or self.default_token_set
        missing = [c.name for c in self.classes if ts not in c.tokens]
        if missing:
            raise KeyError(f"attribute {self.name!r}: token set {ts!r} has no token for class(es) {missing}")
        return [c.tokens[ts] for c in self.classes]


def method_token_set(method_spec: dict, attribute_spec: dict) -> str:
    """The steering token set a method of kind ``ours`` uses: its own ``token_set``, else its attribute's
    ``default_token_set``. One helper for training, generation and the pre-flight checks, so they agree.
    ``attribute_spec`` is a config entry (a validated config has the schema's default filled in) or an
    :class:`Attribute`."""
    if method_spec.get("token_set"):
        return method_spec["token_set"]
    if isinstance(attribute_spec, Attribute):
        return attribute_spec.default_token_set
    return attribute_spec.get("default_token_set", Attribute.default_token_set)


def attributes_from_config(config: dict) -> dict[str, Attribute]:
    return {name: Attribute.from_config(name, spec) for name, spec in config["attributes"].items()}


def attribute_of_dataset(config: dict, dataset: str) -> Attribute:
    name = config["datasets"][dataset]["attribute"]
    return Attribute.from_config(name, config["attributes"][name])
