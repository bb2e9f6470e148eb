"""The program-aided verifier on fakes: programs written once per tree, run in the sandbox,
agreement as the tool score, stored with the tree, not rewritten on resume."""

from __future__ import annotations

from sqlmodel import Session, select

from engine.api import search_problem
from engine.config import SearchConfig
from engine.critics import Critics
from engine.critics.program import CODE_FENCE, ProgramVerifier, agreement, code_of
from engine.persist import load_tree
from engine.prompts import PROGRAM_SYSTEM
from engine.search import run_search
from engine.types import Option, Problem, ProgramCheck
from store import schema
from store.db import make_engine
from tests.fakes import FakeORM, FakePolicy, FakePRM, fake_components

QUESTION = "Tom has 3 apples and buys 4 more. How many apples?"
PROGRAMS = (
    "apples = 3 + 4\nprint(apples)\n```",  # agrees with the right answer
    "print(3 * 4)\n```",  # a wrong program
    "while True:\n    pass\n```",  # never ends: no verdict
    "import os\nprint(os.getcwd())\n```",  # refused by the interpreter: no verdict
)


class FakeCoder(FakePolicy):
    """A ``FakePolicy`` that also writes the programs above when asked with the verifier's prompt."""

    def __init__(self, programs: tuple[str, ...] = PROGRAMS) -> None:
        super().__init__()
        self.programs = programs
        self.program_calls = 0

    def chat_ids(self, system: str, user: str) -> tuple[int, ...]:
        return self.tokenizer.encode(f"{system} || {user}")

    def complete(self, states, *, n, termination, max_tokens, temperature, seed):
        prompt = self.decode(states[0])
        if not prompt.startswith(PROGRAM_SYSTEM):
            return super().complete(
                states,
                n=n,
                termination=termination,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
            )
        assert prompt.endswith(CODE_FENCE), "the reply is begun inside a code fence"
        assert termination("print(1)\n```") == "code"
        self.program_calls += 1
        texts = [self.programs[i % len(self.programs)] for i in range(n)]
        options = [Option(t, self.tokenizer.encode(t), -1.0, -0.1, False, "code") for t in texts]
        self._stats.generated_tokens += sum(len(o.token_ids) for o in options)
        return [options]


def _config(**overrides) -> SearchConfig:
    settings = {"simulations": 6, "seed": 3, "similarity": "edit", "rollouts": 1, "tool": "program"}
    return SearchConfig(**{**settings, "programs": 4, **overrides})


def _verifier(policy: FakeCoder, config: SearchConfig) -> ProgramVerifier:
    return ProgramVerifier(
        policy, programs=config.programs, temperature=0.7, max_tokens=config.program_max_tokens, seed=1
    )


def test_code_and_agreement() -> None:
    assert code_of("x = 1\nprint(x)\n```\nSome prose after.") == "x = 1\nprint(x)\n"
    checks = [
        ProgramCheck("", 1, "ok", "7\n", "", "7"),
        ProgramCheck("", 1, "ok", "12\n", "", "12"),
        ProgramCheck("", 1, "timeout", "", "CPU time limit reached", None),
    ]
    assert agreement("7", checks) == 0.5 and agreement("7.0", checks) == 0.5
    assert agreement("9", checks) == 0.0 and agreement(None, checks) == 0.0
    assert agreement("7", checks[2:]) is None, "no program gave a verdict: no opinion"


def test_search_writes_programs_once_and_scores_trajectories_by_agreement() -> None:
    policy = FakeCoder()
    config = _config()
    tool = _verifier(policy, config)
    critics = Critics(prm=FakePRM(), orm=FakeORM(), tool=tool)
    tree = run_search(question=QUESTION, policy=policy, critics=critics, config=config)
    assert policy.program_calls == 1
    assert [program.verdict for program in tree.programs] == ["7", "12", None, None]
    assert [program.status for program in tree.programs] == ["ok", "ok", "timeout", "error"]
    assert "Import not supported" in tree.programs[3].error, "the interpreter's message is kept"
    rollouts = [rollout for node in tree.nodes for rollout in node.rollouts]
    assert rollouts and all(r.tool == (0.5 if r.answer == "7" else 0.0) for r in rollouts)
    program_tokens = sum(program.tokens for program in tree.programs)
    options = sum(len(node.option.token_ids) for node in tree.nodes[1:])
    rollout_tokens = sum(r.tokens for r in rollouts)
    assert tree.generated_tokens == program_tokens + options + rollout_tokens, "programs count as compute"


def test_programs_are_stored_and_a_resumed_search_does_not_write_them_again(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'programs.db'}")
    policy = FakeCoder()
    config = _config(simulations=3)
    components = fake_components(policy, config)
    components.critics = Critics(prm=FakePRM(), orm=FakeORM(), tool=_verifier(policy, config))
    problem = Problem(question=QUESTION, answer="7", task="custom")
    result = search_problem(engine, problem, model="fake", config=config, components=components)
    with Session(engine) as session:
        rows = session.exec(select(schema.VerifierProgram).order_by(schema.VerifierProgram.index)).all()
        verify = session.exec(select(schema.SearchEvent).where(schema.SearchEvent.phase == "verify")).all()
    assert [row.verdict for row in rows] == ["7", "12", None, None]
    assert rows[2].error == "CPU time limit reached" and rows[0].output == "7\n"
    assert [event.simulation for event in verify] == [0]
    tree, _ = load_tree(engine, result.tree_id)
    assert [program.verdict for program in tree.programs] == ["7", "12", None, None]

    fresh = FakeCoder()
    more = _config(simulations=5)
    critics = Critics(prm=FakePRM(), orm=FakeORM(), tool=_verifier(fresh, more))
    resumed = run_search(question=QUESTION, policy=fresh, critics=critics, config=more, tree=tree)
    assert fresh.program_calls == 0 and resumed.simulations_done == 5
    assert len(resumed.programs) == 4


def test_the_search_goes_on_when_no_program_gives_a_verdict() -> None:
    policy = FakeCoder(programs=("print('no idea')\n```", "x = 1\n```", "print(1 +\n```"))
    config = _config(programs=3, simulations=4)
    critics = Critics(prm=FakePRM(), orm=FakeORM(), tool=_verifier(policy, config))
    tree = run_search(question=QUESTION, policy=policy, critics=critics, config=config)
    assert tree.simulations_done == 4
    assert [program.verdict for program in tree.programs] == [None, None, None]
    assert [program.error for program in tree.programs][:2] == ["printed no number", "printed nothing"]
    assert all(r.tool is None for node in tree.nodes for r in node.rollouts), "no verdict, no opinion"


def _tree_with(answers: list[str], verdicts: list[str | None]):
    from engine.tree import Tree

    tree = Tree.new(QUESTION, (0,))
    for answer in answers:
        child = tree.add_child(
            0, Option(f"The answer is {answer}.\n", (1,), -1.0, -1.0, True, "eos"), simulation=0
        )
        child.terminal, child.answer = True, answer
    tree.programs = [ProgramCheck("", 1, "ok", "", "", verdict) for verdict in verdicts]
    return tree


def test_programs_vote_but_only_answers_a_trajectory_reached_are_elected() -> None:
    from engine.answer_selection import choose_answers, vote_leader, vote_totals

    tree = _tree_with(["7", "8", "8"], ["7", "7", "7", "9", "9", "9", "9", None])
    assert vote_totals(tree) == {"7": 1.0, "8": 2.0}
    assert vote_totals(tree, program_votes=1.0) == {"7": 4.0, "8": 2.0, "9": 4.0}
    assert choose_answers(tree)["vote"].answer == "8", "without program votes the majority wins"
    assert choose_answers(tree, program_votes=1.0)["vote"].answer == "7", "9 has no trajectory to show"
    assert vote_leader(tree, program_votes=1.0) == ("7", 0.0), "the lead is over 9 too"


def test_a_settled_vote_stops_the_search_and_a_resume_stays_stopped() -> None:
    policy = FakeCoder(programs=("print(7)\n```",))
    config = _config(simulations=30, programs=6, program_votes=3.0, stop_when_settled=True)
    critics = Critics(prm=FakePRM(), orm=FakeORM(), tool=_verifier(policy, config))
    tree = run_search(question=QUESTION, policy=policy, critics=critics, config=config)
    assert 0 < tree.simulations_done < 30, "18 program votes for 7 settle the vote early"
    done = tree.simulations_done
    again = run_search(question=QUESTION, policy=policy, critics=critics, config=config, tree=tree)
    assert again.simulations_done == done
    unsettled = run_search(
        question=QUESTION, policy=FakeCoder(), critics=critics, config=_config(simulations=8)
    )
    assert unsettled.simulations_done == 8, "the rule is off unless asked for"
