"""The OpenID provider: protocol rules on authlib, Flask views kept thin."""
