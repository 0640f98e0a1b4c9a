"""Engine-side commands of `mtpchatd`: bench, train-head, and what they need (real shapes, an oracle drafter).

May import every other part of `daemon`; nothing in the serving path imports this package.
"""
