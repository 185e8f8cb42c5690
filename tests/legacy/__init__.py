"""Legacy state built by the old cron requester itself (slapos.cookbook 1.0.514), issue 12."""
