"""Where a group's membership takes effect: `local` (Postroom's database is the truth; the embedded
relay or a Postfix lookup delivers) or a platform — Google Workspace, Microsoft 365, WeCom mail, LDAP,
Mailman 3. A provider is where a plan lands, never a second path: plans are still executed by
`bot.groups.membership.Memberships`, and the outbox (bot/groups/outbox.py) pushes what they changed.
"""
