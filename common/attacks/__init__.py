"""The attacks: ℓ∞ PGD (`pgd`) and AutoAttack's (`apgd`, `fab`, `square`, the chain in
`autoattack`), each module's docstring its specification."""
