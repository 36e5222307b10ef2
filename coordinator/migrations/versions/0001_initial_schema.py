"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 20:16:10.100142
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import coordinator.db
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    _problem_sets()
    _workers()
    _campaigns()
    _problems()
    _jobs()
    _traces()


def _problem_sets() -> None:
    op.create_table('problem_sets',
    sa.Column('id', coordinator.db.GUID(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('created_at', coordinator.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )


def _workers() -> None:
    op.create_table('workers',
    sa.Column('id', coordinator.db.GUID(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('banned', sa.Boolean(), nullable=False),
    sa.Column('engine', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('hardware', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('models', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('jobs_submitted', sa.Integer(), nullable=False),
    sa.Column('jobs_accepted', sa.Integer(), nullable=False),
    sa.Column('created_at', coordinator.db.UTCDateTime(), nullable=False),
    sa.Column('last_seen_at', coordinator.db.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_workers_scope'), ['scope'], unique=False)


def _campaigns() -> None:
    op.create_table('campaigns',
    sa.Column('id', coordinator.db.GUID(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('problem_set_id', coordinator.db.GUID(), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('model_revision', sa.String(length=128), nullable=True),
    sa.Column('sampling', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('samples_per_problem', sa.Integer(), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', coordinator.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['problem_set_id'], ['problem_sets.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_campaigns_problem_set_id'), ['problem_set_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_campaigns_status'), ['status'], unique=False)


def _problems() -> None:
    op.create_table('problems',
    sa.Column('id', coordinator.db.GUID(), nullable=False),
    sa.Column('problem_set_id', coordinator.db.GUID(), nullable=False),
    sa.Column('external_id', sa.String(length=256), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('system', sa.Text(), nullable=True),
    sa.Column('verifier_kind', sa.String(length=32), nullable=False),
    sa.Column('verifier_spec', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('extra', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['problem_set_id'], ['problem_sets.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('problem_set_id', 'external_id')
    )
    with op.batch_alter_table('problems', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_problems_problem_set_id'), ['problem_set_id'], unique=False)


def _jobs() -> None:
    op.create_table('jobs',
    sa.Column('id', coordinator.db.GUID(), nullable=False),
    sa.Column('campaign_id', coordinator.db.GUID(), nullable=False),
    sa.Column('problem_id', coordinator.db.GUID(), nullable=False),
    sa.Column('sample_index', sa.Integer(), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('lease_id', coordinator.db.GUID(), nullable=True),
    sa.Column('worker_id', coordinator.db.GUID(), nullable=True),
    sa.Column('lease_deadline', coordinator.db.UTCDateTime(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', coordinator.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['problem_id'], ['problems.id'], ),
    sa.ForeignKeyConstraint(['worker_id'], ['workers.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('campaign_id', 'problem_id', 'sample_index'),
    sa.UniqueConstraint('lease_id')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_campaign_status', ['campaign_id', 'status'], unique=False)
        batch_op.create_index('ix_jobs_status_deadline', ['status', 'lease_deadline'], unique=False)


def _traces() -> None:
    op.create_table('traces',
    sa.Column('id', coordinator.db.GUID(), nullable=False),
    sa.Column('job_id', coordinator.db.GUID(), nullable=False),
    sa.Column('campaign_id', coordinator.db.GUID(), nullable=False),
    sa.Column('worker_id', coordinator.db.GUID(), nullable=False),
    sa.Column('lease_id', coordinator.db.GUID(), nullable=False),
    sa.Column('attempt_id', coordinator.db.GUID(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('completion_token_ids', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('logprobs', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('finish_reason', sa.String(length=16), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('generate_s', sa.Float(), nullable=False),
    sa.Column('engine', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('hardware', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('verdict', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created_at', coordinator.db.UTCDateTime(), nullable=False),
    sa.Column('verified_at', coordinator.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['worker_id'], ['workers.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('attempt_id'),
    sa.UniqueConstraint('job_id')
    )
    with op.batch_alter_table('traces', schema=None) as batch_op:
        batch_op.create_index('ix_traces_campaign_status', ['campaign_id', 'status'], unique=False)
        batch_op.create_index('ix_traces_status_created', ['status', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_traces_worker_id'), ['worker_id'], unique=False)


def downgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    with op.batch_alter_table('traces', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_traces_worker_id'))
        batch_op.drop_index('ix_traces_status_created')
        batch_op.drop_index('ix_traces_campaign_status')

    op.drop_table('traces')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_status_deadline')
        batch_op.drop_index('ix_jobs_campaign_status')

    op.drop_table('jobs')
    with op.batch_alter_table('problems', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_problems_problem_set_id'))

    op.drop_table('problems')
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_campaigns_status'))
        batch_op.drop_index(batch_op.f('ix_campaigns_problem_set_id'))

    op.drop_table('campaigns')
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_workers_scope'))

    op.drop_table('workers')
    op.drop_table('problem_sets')
    # ### end Alembic commands ###
