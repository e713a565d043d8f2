"""The sentence a page shows for each reason code of the password policy.

The reason code itself (`password.too_short`) is what the audit log records; people read
this sentence, in the page's language. It names the rule that failed and the setting's
number, never what the password matched (which list entry, which of the person's words).
"""

from __future__ import annotations

from flask_babel import gettext, ngettext

from policies import Decision


def password_message(decision: Decision) -> str:
    params = decision.message_params
    match decision.reason:
        case "password.acceptable":
            return gettext("The password can be used.")
        case "password.too_short":
            return gettext("The password is too short: use at least %(min)d characters.",
                           min=params["min"])
        case "password.too_long":
            return gettext("The password is too long: use at most %(max)d characters.",
                           max=params["max"])
        case "password.missing_character_class":
            return ngettext(
                "The password must contain at least %(num)d kind of character: lower case, upper "
                "case, digits or other characters.",
                "The password must mix at least %(num)d kinds of characters: lower case, upper case, "
                "digits, other characters.", params["count"])
        case "password.common":
            return gettext("This password is too common: it is on a list of passwords that are often "
                           "used or have leaked. Choose another one.")
        case "password.contains_personal_info":
            return gettext("The password must not contain your name, username, e-mail address, unit "
                           "or the province's name, even with changes such as capitals, digits or "
                           "reversed.")
        case "password.too_weak":
            return gettext("The password is too easy to guess. A few unrelated words make a long "
                           "password that is easy to remember.")
        case "password.reused":
            return ngettext("Choose a password other than your current one.",
                            "Choose a password other than your last %(num)d passwords.",
                            params["count"])
        case "password.too_recent":
            return ngettext("Your password was changed less than %(num)d hour ago; it cannot be "
                            "changed again yet.",
                            "Your password was changed less than %(num)d hours ago; it cannot be "
                            "changed again yet.", params["hours"])
        case "password.expired":
            return ngettext("Your password is more than %(num)d day old and has expired: choose a "
                            "new one.",
                            "Your password is more than %(num)d days old and has expired: choose a "
                            "new one.", params["days"])
        case "password.current":
            return gettext("Your password is still valid.")
    return gettext("This password cannot be used.")
