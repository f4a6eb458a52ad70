"""Training SFNet (Lee et al., TPAMI 2020) on photo-sketch pairs with foreground masks."""
