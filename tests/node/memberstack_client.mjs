// Drives the official @memberstack/admin client, unmodified, against a Memberstack emulator.
//
// Reads MEMBERSTACK_URL (the emulator's base URL) and MEMBERSTACK_KEY (an app's secret key),
// plus MEMBERSTACK_FREE_PLAN, MEMBERSTACK_PAID_PLAN and GHL_LOCATION_ID for the test data.
// Every call's result, or the error it was rejected with, goes into one JSON object on stdout.
// The pytest test that runs this script makes the assertions. A failure that stops the run
// exits 1 with the message on stderr.
import memberstackAdmin from "@memberstack/admin";

function requireEnv(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`environment variable ${name} is missing`);
  }
  return value;
}

// Returns {ok: true, value} or {ok: false, error}, so expected rejections become data.
async function attempt(call) {
  try {
    return { ok: true, value: await call() };
  } catch (error) {
    return { ok: false, error: error instanceof Error ? { message: error.message } : error };
  }
}

// Lists every member page by page, following endCursor while hasNextPage is true.
async function listAllMembers(client, limit) {
  const pages = [];
  let after;
  for (;;) {
    const params = {};
    if (limit !== undefined) params.limit = limit;
    if (after !== undefined) params.after = after;
    const page = await client.members.list(params);
    pages.push({
      size: page.data.length,
      ids: page.data.map((member) => member.id),
      totalCount: page.totalCount,
      endCursor: page.endCursor,
      hasNextPage: page.hasNextPage,
      hasJson: page.data.some((member) => "json" in member),
    });
    if (!page.hasNextPage || pages.length > 1000) return pages;
    after = page.endCursor;
  }
}

async function exerciseMembers(client, report) {
  const freePlan = requireEnv("MEMBERSTACK_FREE_PLAN");
  const paidPlan = requireEnv("MEMBERSTACK_PAID_PLAN");
  const email = "ada+node@example.com";

  report.pagesWithLimit = await listAllMembers(client, 100);
  report.pagesWithDefaultSize = await listAllMembers(client, undefined);

  const created = await client.members.create({
    email,
    password: "correct-horse-battery-staple-42",
    customFields: { "first-name": "Ada", "not-a-defined-field": "dropped" },
    metaData: { ghlContactId: "nodeContact000000001" },
    json: { ghl: { notes: [] } },
    plans: [{ planId: freePlan }],
  });
  report.created = created.data;
  const memberId = created.data.id;

  report.duplicateEmail = await attempt(() =>
    client.members.create({ email, password: "another-long-password-123" }),
  );
  report.retrievedById = (await client.members.retrieve({ id: memberId })).data;
  report.retrievedByEmail = (await client.members.retrieve({ email })).data;
  report.missingByEmail = await client.members.retrieve({ email: "nobody@example.com" });

  report.updated = (
    await client.members.update({
      id: memberId,
      data: { customFields: { "last-name": "Lovelace" }, metaData: { ghlLocationId: "loc" } },
    })
  ).data;
  report.updateUnknown = await attempt(() =>
    client.members.update({ id: "mem_doesnotexist000000000", data: { customFields: {} } }),
  );

  report.removeFreePlan = await client.members.removeFreePlan({ id: memberId, data: { planId: freePlan } });
  report.afterRemovePlan = (await client.members.retrieve({ id: memberId })).data;
  report.addFreePlan = await client.members.addFreePlan({ id: memberId, data: { planId: freePlan } });
  report.afterAddPlan = (await client.members.retrieve({ id: memberId })).data;
  report.addPaidPlan = await attempt(() =>
    client.members.addFreePlan({ id: memberId, data: { planId: paidPlan } }),
  );
  return memberId;
}

async function exerciseRecords(client, report, memberId) {
  const locationId = requireEnv("GHL_LOCATION_ID");
  const table = "ghl_notes";
  const noteData = {
    ghl_note_id: "nodeNote000000000001",
    ghl_contact_id: "nodeContact000000001",
    ghl_location_id: locationId,
    member: memberId,
    body: "<p>Paid &amp; <b>signed</b></p>",
    date_added: "2025-05-01T10:00:00.000Z",
  };

  report.tables = (await client.dataTables.list()).data;
  report.table = (await client.dataTables.get({ table })).data;

  const created = await client.dataTables.createRecord({ table, data: noteData, memberId });
  report.recordCreated = created.data;
  const recordId = created.data.id;

  report.recordDuplicate = await attempt(() =>
    client.dataTables.createRecord({ table, data: noteData, memberId }),
  );
  report.recordUnknownMember = await attempt(() =>
    client.dataTables.createRecord({
      table,
      data: { ...noteData, ghl_note_id: "nodeNote000000000002", member: "mem_doesnotexist000000000" },
    }),
  );
  report.recordQuery = (
    await client.dataTables.queryRecords({
      table,
      query: { findMany: { where: { ghl_note_id: { equals: noteData.ghl_note_id } }, take: 10 } },
    })
  ).data;
  report.recordUpdated = (
    await client.dataTables.updateRecord({ table, recordId, data: { body: "plain text" } })
  ).data;
  report.recordFetched = (await client.dataTables.getRecord({ table, recordId })).data;
  report.recordDeleted = (await client.dataTables.deleteRecord({ table, recordId })).data;
  report.recordAfterDelete = await attempt(() => client.dataTables.getRecord({ table, recordId }));
}

async function main() {
  const client = memberstackAdmin.init(requireEnv("MEMBERSTACK_KEY"), {
    baseUrl: requireEnv("MEMBERSTACK_URL"),
  });
  const report = {};
  const memberId = await exerciseMembers(client, report);
  await exerciseRecords(client, report, memberId);

  report.deleted = await client.members.delete({ id: memberId });
  report.afterDelete = await client.members.retrieve({ id: memberId });
  process.stdout.write(JSON.stringify(report) + "\n");
}

main().catch((error) => {
  const detail = error instanceof Error ? error.stack : JSON.stringify(error);
  process.stderr.write(`memberstack_client.mjs failed: ${detail}\n`);
  process.exit(1);
});
