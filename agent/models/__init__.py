"""Model clients behind one interface (`base.Model`): CWM over raw /v1/completions with the prompt
rendered here (`completions`), any OpenAI-compatible chat endpoint (`chat`), recorded replies
(`replay`); the shared HTTP plumbing (`http`), token counting (`tokens`) and the one place a
`--model` string becomes a client (`factory`).
"""
