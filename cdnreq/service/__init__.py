"""The daemon: a thin shell around the reconciler (lifecycle and signals,
reloads, the status view, backups, the store-opening policy, `once`)."""
