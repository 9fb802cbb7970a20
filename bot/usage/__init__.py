"""The usage review (`/report usage`, and its digest to HR): every send of a period — group posts,
campaigns, automations, test sends — counted, categorised by use case with the reasons shown, and the
misuse flagged with its evidence and the fix (bot/usage/classify.py decides, bot/usage/review.py reads
the database and writes the report)."""
