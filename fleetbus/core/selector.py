"""Label selectors with Kubernetes semantics: does a profile target this site?"""

from collections.abc import Mapping

from schemas.profile import LabelRequirement, LabelSelector, SelectorOperator


def requirement_matches(req: LabelRequirement, labels: Mapping[str, str]) -> bool:
    value = labels.get(req.key)
    match req.operator:
        case SelectorOperator.IN:
            return value is not None and value in req.values
        case SelectorOperator.NOT_IN:  # as in Kubernetes: a site without the key matches
            return value is None or value not in req.values
        case SelectorOperator.EXISTS:
            return value is not None
        case SelectorOperator.DOES_NOT_EXIST:
            return value is None


def matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """True when every `match_labels` pair and every expression holds; empty matches all."""
    return all(labels.get(k) == v for k, v in selector.match_labels.items()) and all(
        requirement_matches(r, labels) for r in selector.match_expressions
    )
