<?php
/**
 * core:archive takes its Piwik\DataAccess\Model from this container (CronArchive's constructor)
 * and hands it to QueueConsumer: replacing the entry here makes every claim, release and
 * completion of the archiver go through ClaimingModel, with no file of Matomo edited.
 *
 * The System Check gets the fleet's entries the way core plugins add theirs.
 */

return [
    'Piwik\DataAccess\Model' => Piwik\DI::autowire('Piwik\Plugins\ArchiveClaim\ClaimingModel'),
    'diagnostics.optional' => Piwik\DI::add([
        Piwik\DI::get('Piwik\Plugins\ArchiveClaim\Diagnostic\ArchiveClaimCheck'),
    ]),
];
