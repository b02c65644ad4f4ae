<?php
/**
 * core:archive takes its Piwik\DataAccess\Model from this container (CronArchive's constructor)
 * and hands it to QueueConsumer: replacing the entry here makes every claim, release and
 * completion of the archiver go through ClaimingModel, with no file of Matomo edited.
 *
 * Only if this Matomo's Model is the one ClaimingModel was written for: ClaimingModel extends
 * it, and a changed signature of a method it overrides would be a fatal error the moment the
 * class is declared, stopping every core:archive. Lib\ModelCompatibility decides by reflection
 * on Matomo's own class, without declaring ours; otherwise Matomo's own Model is handed out
 * (autowired under a name of ours, exactly as Matomo's container would build it), and
 * core:archive start logs one NOTICE and the System Check warns (ArchiveClaim.php,
 * Diagnostic/ArchiveClaimCheck.php).
 *
 * The System Check gets the fleet's entries the way core plugins add theirs.
 */

use Piwik\Plugins\ArchiveClaim\Lib\ModelCompatibility;
use Psr\Container\ContainerInterface;

return [
    'Piwik\DataAccess\Model' => Piwik\DI::factory(function (ContainerInterface $c) {
        // The class name stays a string: naming ClaimingModel::class here would not load it,
        // but a string keeps the point obvious: nothing declares it unless it is compatible.
        return ModelCompatibility::compatible()
            ? $c->get('Piwik\Plugins\ArchiveClaim\ClaimingModel')
            : $c->get('ArchiveClaim.MatomoModel');
    }),
    'ArchiveClaim.MatomoModel' => Piwik\DI::autowire('Piwik\DataAccess\Model'),
    'diagnostics.optional' => Piwik\DI::add([
        Piwik\DI::get('Piwik\Plugins\ArchiveClaim\Diagnostic\ArchiveClaimCheck'),
    ]),
];
