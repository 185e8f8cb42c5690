"""DNS for domain challenges: name-server addresses (names.py), the challenge
tokens (challenge.py) and the batched, concurrent resolver (resolver.py)."""
