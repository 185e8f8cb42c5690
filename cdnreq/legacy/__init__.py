"""Taking over from the cron requester (recipes of slapos.cookbook 1.0.514).

`read` copies and reads its SQLite databases (never writing them), `state`
holds what they say, `adopt` decides what cdnreq keeps of it (pure), and
`cdnreq.commands.import_legacy` applies that to the store.
"""
