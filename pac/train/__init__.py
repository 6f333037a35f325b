"""Single-device training and evaluation of every technique."""
