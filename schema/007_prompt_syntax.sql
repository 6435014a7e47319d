-- 007_prompt_syntax.sql - the prompt syntax of each generation: 'a1111' (AUTOMATIC1111's
-- emphasis, chunks and BREAK: ldmgen's default from this version on) or 'plain' (the
-- text as it is, cut to 75 tokens, as diffusers).  Every generation recorded before this
-- version was made with the plain syntax.
ALTER TABLE generations ADD COLUMN prompt_syntax TEXT NOT NULL DEFAULT 'plain';
