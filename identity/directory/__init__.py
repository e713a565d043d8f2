"""The directory of officials: OpenLDAP or Active Directory, over LDAP.

* settings.py  — `[directories.<name>]` in congvu.toml, the shipped attribute maps
* entries.py   — entries and groups as plain data; nested group membership
* ldap.py      — LdapDirectory (ldap3): pooled connections, TLS, paged searches,
                 authenticate, fetch_user, change_password, check
* sync.py      — full and incremental sync into the user tables
* signin.py    — what the sign-in and the account page call

Imported lazily: identity.config needs only settings.py, which does not import ldap3.
"""
