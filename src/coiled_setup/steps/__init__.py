"""The wizard's steps: each observes what exists, plans a change, and applies it."""
