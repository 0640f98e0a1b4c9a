"""Offline builder for the tokenizer of tiny Qwen3.5/3.6-style test checkpoints.

Tiny checkpoints used by the tests and the no-download demo still need a real
tokenizer and chat template, so that encoding, decoding and prompt rendering run
through the same code paths as a hub model. This module trains a small byte-level
BPE on an embedded corpus and writes it in the file layout the Hugging Face hub
ships for Qwen models. Nothing is downloaded and the output is deterministic.
"""

import json
import pathlib

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

# As in Qwen3: the ChatML markers are special (dropped by skip_special_tokens),
# the think markers are plain added tokens so decoded replies keep them.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]

# Same normalizer and split as Qwen2Tokenizer, which rebuilds this pipeline on
# load; training with anything else would make the merges disagree with it.
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# ChatML as in Qwen3: earlier assistant turns keep only the reply after
# </think>, and enable_thinking=false pre-fills an empty think block.
CHAT_TEMPLATE = r"""{%- for message in messages -%}
{%- set content = message.content if message.content is string else '' -%}
{%- if message.role == 'assistant' and '</think>' in content -%}
{%- set content = content.split('</think>')[-1].lstrip('\n') -%}
{%- endif -%}
{{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\n' -}}
{%- if enable_thinking is defined and enable_thinking is false -%}
{{- '<think>\n\n</think>\n\n' -}}
{%- endif -%}
{%- endif -%}"""

CORPUS = """\
Hello! How can I help you today? I would like to know how the weather will be tomorrow.
Sure, here is a short answer: it should be sunny in the morning and cloudy after noon.
Can you explain what a tokenizer does? A tokenizer splits text into small pieces called
tokens, and each token is mapped to a number that the model can read.
Thanks, that makes sense. What is the capital of France? The capital of France is Paris.
Please write a haiku about the sea. Waves fold into foam, the gulls are counting the tide,
salt wind in my hair.
I think the answer is 42, but let me check again. Yes, 6 times 7 equals 42.
The train leaves at 9:15 and arrives at 11:40, so the trip takes 2 hours and 25 minutes.
My order number is 128734 and it has not arrived yet. I am sorry to hear that; let me look.
Could you summarize this paragraph in one sentence? The report says sales grew by 12 percent
in 2023, mostly because of new customers in the north and the west of the country.
Let's think step by step. First we read the input, then we count the words, and finally we
print the result. If the list is empty, we return zero instead of raising an error.
She opened the window, listened to the rain for a while, and then went back to her book.
The old library smelled of paper and dust, and every shelf held a story nobody remembered.
We walked along the river until the lights of the city appeared behind the hills.
Remember to drink water, take short breaks, and save your work often.
User: what time is it? Assistant: I do not have a clock, but your device should show it.
def add(a, b):
    return a + b

def mean(values):
    if not values:
        return 0.0
    return sum(values) / len(values)

class Counter:
    def __init__(self):
        self.count = 0

    def step(self, n=1):
        self.count += n
        return self.count

for i in range(10):
    print(f"step {i}: {i * i}")

import json
data = {"name": "tiny", "layers": 2, "hidden": 64, "ok": True}
print(json.dumps(data, indent=2))
x = [1, 2, 3, 4, 5]; y = [v * 2 for v in x]  # doubles every value
while queue:
    item = queue.pop(0)
    if item is None:
        break
const total = items.reduce((acc, it) => acc + it.price, 0);
SELECT id, name FROM users WHERE age >= 18 ORDER BY name;
The numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 2.718 -1 +5 50% $20 #3 are common.
Dates like 2024-01-31 and times like 23:59:59 appear in logs and in emails.
Error: file not found. Warning: disk is almost full. Info: server started on port 8080.
Why is the sky blue? Sunlight is scattered by the air, and blue light scatters the most.
How do I make tea? Boil water, pour it over the leaves, wait three minutes, and enjoy.
Tell me a joke. Why did the computer go to the doctor? Because it had a virus!
Translate "good morning" to Spanish. Buenos dias. And to German? Guten Morgen.
I can help with writing, math, code, planning, and many other everyday questions.
If you have more questions, just ask. Have a great day, and thank you for chatting!
Our garden grows tomatoes, beans, onions and sweet peppers; the cat sleeps under the apple tree.
Every winter the village lake freezes, and children skate there while parents sell hot soup.
A good recipe lists ingredients first, then explains each step in the order you will need it.
The museum opens at ten on weekdays and stays open late on Friday evenings until eight.
Quick note: the meeting moved to Thursday because several people are travelling on Wednesday.
Could you recommend a book? Try a mystery novel; the plot twists keep readers guessing.
Mountains, forests, deserts and oceans cover our planet, each with its own animals and weather.
When debugging, reproduce the problem first, then change one thing at a time and measure.
Keyboard shortcuts save time: copy, paste, undo, search, and switch between open windows.
The bakery sells bread, cookies, muffins and cakes; its chocolate croissants vanish by noon.
Write clear commit messages, keep functions short, and add tests for every bug you fix.
Music theory describes scales, chords, rhythm and harmony, and how melodies move over time.
A healthy breakfast might include oats, yogurt, fruit, eggs, or whole grain toast with butter.
The spacecraft orbited Jupiter, photographing storms larger than our entire world.
def parse_line(line: str) -> tuple[str, int]:
    key, _, value = line.partition("=")
    return key.strip(), int(value)

async def fetch(session, url):
    async with session.get(url, timeout=30) as response:
        response.raise_for_status()
        return await response.json()

try:
    config = load_config("settings.yaml")
except FileNotFoundError as exc:
    logger.warning("missing config: %s", exc)
matrix = [[row * col for col in range(4)] for row in range(4)]
git commit -m "fix: handle empty input"; pip install --upgrade package
Phone 555-0123, zip 90210, version 1.2.3, ratio 16:9, temperature 21.5 degrees, pi 3.14159.
"""


def build_tokenizer(out_dir: pathlib.Path, vocab_size: int = 1024) -> dict[str, int]:
    """Write tokenizer.json and tokenizer_config.json; return special token ids."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(THINK_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        # All 256 bytes, so any text (unicode included) encodes without unknowns.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in THINK_TOKENS])
    # The trainer stops early when the corpus runs out of pairs to merge.
    if tokenizer.get_vocab_size() != vocab_size:
        raise ValueError(f"corpus yields {tokenizer.get_vocab_size()} tokens, not {vocab_size}")
    tokenizer.save(str(out_dir / "tokenizer.json"))

    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS + THINK_TOKENS}
